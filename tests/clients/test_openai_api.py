"""The OpenAI-compatible API, driven by the `openai` package against a real local cluster.

The cluster serves a built tiny model; a finished training job with a LoRA adapter is laid out
in the training service's jobs folder before start-up (the service re-reads job folders), so the
adapter is reachable as a model name and fetched by the rollout service over FetchAdapter.
"""

from __future__ import annotations

import io
import json
import threading
import time

import openai
import pytest
import torch
import uvicorn
from llamafleet import cli, cluster
from llamafleet.client import Client
from llamafleet.openai_api import create_app
from llamafleet.training.v1 import training_pb2
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from services.training.jobs.events import EventLog
from services.training.tiny.model import build_tiny_model

JOB = "chatjob"


def _finished_lora_job(jobs_dir, base):
    job_dir = jobs_dir / JOB
    model = AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(0)
    lora = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    )
    with torch.no_grad():  # a LoRA B of zeros would change nothing: make it matter
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    lora.save_pretrained(job_dir / "adapters" / "v1")
    spec = training_pb2.TrainingJobSpec(
        job_id=JOB,
        base_model=str(base),
        stage=training_pb2.STAGE_SFT,
        output_dir=str(job_dir / "output"),
    )
    spec.finetuning.type = training_pb2.FINETUNING_TYPE_LORA
    (job_dir / "spec.binpb").write_bytes(spec.SerializeToString())
    log = EventLog(job_dir)
    queued, done = training_pb2.JOB_STATE_QUEUED, training_pb2.JOB_STATE_SUCCEEDED
    log.append(training_pb2.TrainingEvent(state_change=training_pb2.StateChange(state=queued)))
    for step, loss in ((1, 3.0), (2, 2.5), (3, 2.0)):
        metrics = training_pb2.TrainingMetrics(step=step, loss=loss)
        if step == 3:
            metrics.eval_loss = 2.2
        log.append(training_pb2.TrainingEvent(metrics=metrics))
    log.append(training_pb2.TrainingEvent(state_change=training_pb2.StateChange(state=done)))
    (job_dir / "result.json").write_text(
        json.dumps({"state": "SUCCEEDED", "message": "", "step": 1})
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    base = build_tiny_model(root / "tiny", size="tiny", seed=0)
    run_dir = root / "run"
    _finished_lora_job(run_dir / "jobs", base)
    state = cluster.up(run_dir, base_model=str(base), roots=[str(root)], timeout=120)
    port = cluster.free_port()
    client = Client({n: s.address for n, s in state.services.items()}, timeout=60)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(client, str(base)), host="127.0.0.1", port=port, log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    api = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    api.run_dir = str(run_dir)  # for the CLI tests below
    yield api
    server.should_exit = True
    thread.join(10)
    client.close()
    cluster.down(run_dir)


def _chat(api, model, **kw):
    return api.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say something about Paris."}],
        max_tokens=8,
        temperature=0,
        **kw,
    )


def test_models_lists_the_base_and_each_adapter_version(api):
    assert [m.id for m in api.models.list().data] == ["base", JOB, f"{JOB}@1"]


def test_chat_completion_and_streaming_agree(api):
    reply = _chat(api, "base")
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 5 and 0 < reply.usage.completion_tokens <= 8

    chunks = list(_chat(api, "base", stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content  # greedy: the same text either way
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_an_adapter_is_a_model_name(api):
    base = _chat(api, "base").choices[0].message.content
    latest = _chat(api, JOB).choices[0].message.content
    pinned = _chat(api, f"{JOB}@1").choices[0].message.content
    assert latest == pinned
    assert latest != base  # the adapter really is applied


def test_errors_use_openai_shapes(api):
    with pytest.raises(openai.NotFoundError) as err:
        _chat(api, "no-such-job")
    assert err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}], top_p=2.0
        )
    assert "top_p" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError):  # no messages at all
        api.chat.completions.create(model="base", messages=[])


def test_cli_chat_keeps_the_conversation_and_uses_the_adapter(api, monkeypatch, capsys):
    """`llamafleet chat` on the same cluster: two turns with the job's adapter, then a bad name."""
    monkeypatch.setattr("sys.stdin", io.StringIO("Hello there.\nAnd Paris?\n/exit\n"))
    assert cli.main(["chat", "--run-dir", api.run_dir, "--model", JOB, "--max-tokens", "6"]) == 0
    turns = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(f"{JOB}> ")]
    assert len(turns) == 2 and all(len(t) > len(JOB) + 2 for t in turns)

    assert cli.main(["chat", "--run-dir", api.run_dir, "--model", "nope"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_plot_draws_the_job_losses(api, tmp_path, capsys):
    out = tmp_path / "loss.png"
    assert cli.main(["plot", JOB, "-o", str(out), "--run-dir", api.run_dir]) == 0
    assert "3 train points, 1 eval points" in capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", "missing-job", "-o", str(out), "--run-dir", api.run_dir]) == 2
