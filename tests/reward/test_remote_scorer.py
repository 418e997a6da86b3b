"""Remote scorers against an HTTP reward server started in the test, with injected 500s, slow
answers and a bearer token: transient failures are retried with backoff, a scorer that keeps
failing fails the item with the reason, and the reward worker dead-letters it after the usual
deliveries while scoring the rest."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from llamafleet.common.v1 import common_pb2
from test_reward_functions import rollout
from test_worker import scored_in, wait_for

from services.common import queues
from services.reward.config import RewardConfig
from services.reward.functions.remote import RemoteError, RemoteScorer
from services.reward.scoring import ScoringEngine
from services.reward.worker import GROUP, RewardWorker

TOKEN = "s3cret-token"


class RewardServer:
    """``POST /<route>``: the score is len(completion); routes misbehave on purpose:
    ``/flaky`` answers 500 to its first ``fail_first`` calls, ``/slow`` sleeps ``slow_s`` on its
    first call, ``/down`` always answers 500, ``/garbage`` answers text."""

    def __init__(self, fail_first: int = 2, slow_s: float = 1.0) -> None:
        self.calls: dict[str, int] = {}
        self.bodies: list[dict] = []
        self.fail_first, self.slow_s = fail_first, slow_s
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                route = self.path.strip("/")
                n = server.calls[route] = server.calls.get(route, 0) + 1
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.bodies.append(body)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, b"missing token")
                if route == "down" or (route == "flaky" and n <= server.fail_first):
                    return self._send(500, b"injected failure")
                if route == "slow" and n == 1:
                    time.sleep(server.slow_s)
                if route == "garbage":
                    return self._send(200, b"not json")
                answer = {"score": len(body["completion"]), "sub_scores": {"calls": n},
                          "detail": f"{route} call {n}"}  # fmt: skip
                return self._send(200, json.dumps(answer).encode())

            def _send(self, code: int, data: bytes):
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except BrokenPipeError:  # the client gave up on a slow answer, as intended
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("TEST_REWARD_TOKEN", TOKEN)
    s = RewardServer()
    yield s
    s.close()


def scorer(server: RewardServer, route: str, **kw) -> RemoteScorer:
    kw = {"token_env": "TEST_REWARD_TOKEN", "timeout_s": 0.3, "retries": 2, "backoff_s": 0.05, **kw}
    return RemoteScorer(name=route, url=f"{server.url}/{route}", **kw)


PAYLOAD = {"prompt": "p", "completion": "abcd", "prompt_ids": [1], "completion_ids": [2],
           "reference": "r", "args": {"k": 1.0}}  # fmt: skip


def test_500s_and_slow_answers_are_retried_until_an_answer(server):
    got = scorer(server, "flaky").score(PAYLOAD)
    assert got == {"score": 4.0, "sub_scores": {"calls": 3.0}, "detail": "flaky call 3"}
    assert server.calls["flaky"] == 3  # two injected 500s, then the answer
    got = scorer(server, "slow").score(PAYLOAD)
    assert got["detail"] == "slow call 2"  # the first attempt ran past its 0.3 s deadline
    assert server.bodies[0] == {"function": "flaky", **PAYLOAD}  # what a remote scorer receives


def test_a_scorer_that_keeps_failing_raises_with_the_reason_after_bounded_retries(server):
    start = time.monotonic()
    with pytest.raises(RemoteError) as err:
        scorer(server, "down").score(PAYLOAD)
    assert "HTTP 500" in str(err.value) and "injected failure" in str(err.value)
    assert "after 3 attempts" in str(err.value)
    assert server.calls["down"] == 3
    assert time.monotonic() - start < 5
    slow = RewardServer(slow_s=5.0)
    try:
        with pytest.raises(RemoteError, match=r"no answer .* within 0.3 s \(after 1 attempts\)"):
            scorer(slow, "slow", retries=0).score(PAYLOAD)
    finally:
        slow.close()


def test_errors_retrying_cannot_fix_are_not_retried(server, monkeypatch):
    monkeypatch.setenv("WRONG_TOKEN", "nope")
    with pytest.raises(RemoteError, match="HTTP 401"):
        scorer(server, "flaky", token_env="WRONG_TOKEN").score(PAYLOAD)
    with pytest.raises(RemoteError, match="not a score"):
        scorer(server, "garbage").score(PAYLOAD)
    assert server.calls == {"flaky": 1, "garbage": 1}
    with pytest.raises(RemoteError, match="cannot reach"):
        RemoteScorer(name="x", url="http://127.0.0.1:1/none", retries=1, backoff_s=0.01).score(
            PAYLOAD
        )


def test_configuration_is_checked():
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteScorer(name="x", url="file:///etc/passwd")
    with pytest.raises(ValueError, match="token_env NOT_SET_ANYWHERE"):
        RemoteScorer(name="x", url="http://h/", token_env="NOT_SET_ANYWHERE")


def test_the_worker_dead_letters_an_item_whose_remote_scorer_keeps_failing(
    server, redis_url, tmp_path
):
    path = tmp_path / "functions.yaml"
    common = "token_env: TEST_REWARD_TOKEN, timeout_s: 0.3, retries: 2, backoff_s: 0.05"
    path.write_text(
        "remote:\n"
        f"  judge: {{url: '{server.url}/flaky', {common}}}\n"
        f"  broken: {{url: '{server.url}/down', {common}}}\n",
        encoding="utf-8",
    )
    engine = ScoringEngine.from_config(RewardConfig(functions_file=str(path)))
    r = queues.connect(redis_url, socket_timeout=3.0)
    judge = [common_pb2.RewardFunctionRef(name="judge")]
    both = judge + [common_pb2.RewardFunctionRef(name="broken")]
    queues.publish(r, queues.ROLLOUT_RESULTS, "rj:1:0:0:0", rollout("rj", 0, "abc", judge))
    queues.publish(r, queues.ROLLOUT_RESULTS, "rj:1:1:0:0", rollout("rj", 1, "abc", both))
    worker = RewardWorker(engine, r, threads=2, lease_ms=300, max_deliveries=2, block_ms=50,
                          consumer_prefix="remote-test")  # fmt: skip
    worker.start()
    try:
        wait_for(lambda: r.xlen(queues.DEADLETTER) == 1, timeout=60, what="a dead letter")
        wait_for(lambda: len(scored_in(r, "rj")) == 1, what="the scored rollout")
        wait_for(lambda: r.xpending(queues.ROLLOUT_RESULTS, GROUP)["pending"] == 0, what="acks")
    finally:
        worker.stop()
        engine.close()
    assert scored_in(r, "rj")["rj:1:0:0:0"].raw_score == 3.0
    [(_eid, fields)] = r.xrange(queues.DEADLETTER)
    assert fields[b"id"] == b"rj:1:1:0:0"
    reason = fields[b"reason"].decode()
    assert "reward function 'broken': remote scorer failed: HTTP 500" in reason
    assert "after 3 attempts" in reason
    assert server.calls["down"] == 2 * 3  # max_deliveries x (1 + retries)
    r.close()
