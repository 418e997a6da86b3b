"""The OpenAI-compatible API, driven by the `openai` package against a real local cluster.

The cluster serves a built tiny model; a finished training job with a LoRA adapter is laid out
in the training service's jobs folder before start-up (the service re-reads job folders), so the
adapter is reachable as a model name and fetched by the rollout service over FetchAdapter.

Conformance, item by item: models (list, retrieve, 404 model_not_found), errors in OpenAI's shape
with the right ``param`` (body validation as OpenAI bounds it, service-side violations, non-JSON
bodies, unknown routes, wrong methods), ``stream_options.include_usage``, ``logprobs`` /
``top_logprobs`` checked against a transformers forward, ``/v1/completions`` checked against
transformers' greedy ``generate``, ``response_format`` and a forced ``tool_choice`` refused on the
hf engine (the vLLM side is tests/rollout/test_vllm_engine.py and test_vllm_tool_choice.py), and
tool calls: the model's text is scripted there (a tiny model writes no calls), everything else
(the data service's parser, the HTTP and the SDK) is real.
"""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient
from llamafleet import cli, cluster
from llamafleet.client import Client
from llamafleet.openai_api import create_app
from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2
from llamafleet.training.v1 import training_pb2, training_service_pb2
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.training.jobs.events import EventLog
from services.training.tiny.model import build_tiny_model

JOB = "chatjob"
RM_JOB = "rmjob"  # a reward-modelling job: scores predictions, is not a chat model


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


def _finished_rm_job(jobs_dir, base):
    """A reward-modelling job's adapter (SEQ_CLS LoRA + a score head, both perturbed so that
    scores differ between replies), laid out as the rm recipe leaves it."""
    from peft import TaskType
    from transformers import AutoModelForSequenceClassification

    job_dir = jobs_dir / RM_JOB
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.config.pad_token_id = 0
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]
    )
    lora = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if param.requires_grad and ("lora_B" in name or "score" in name):
                param.normal_(0, 0.5)
    lora.save_pretrained(job_dir / "adapters" / "v1")
    spec = training_pb2.TrainingJobSpec(
        job_id=RM_JOB, base_model=str(base), stage=training_pb2.STAGE_RM,
        output_dir=str(job_dir / "output"),
    )  # fmt: skip
    spec.finetuning.type = training_pb2.FINETUNING_TYPE_LORA
    (job_dir / "spec.binpb").write_bytes(spec.SerializeToString())
    log = EventLog(job_dir)
    done = training_pb2.JOB_STATE_SUCCEEDED
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
    _finished_rm_job(run_dir / "jobs", base)
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
    api.base_path, api.client = str(base), client
    api.gateway = server.config.app.state.gateway
    yield api
    server.should_exit = True
    thread.join(10)
    client.close()
    cluster.down(run_dir)


def _chat(api, model, **kw):
    return api.chat.completions.create(
        model=model,
        **{
            "messages": [{"role": "user", "content": "Say something about Paris."}],
            "max_tokens": 8,
            "temperature": 0,
            **kw,
        },
    )


def test_models_lists_the_base_and_each_adapter_version(api):
    # the reward-modelling job's adapter scores, it does not chat: not a model here
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


# --- conformance: models, errors --------------------------------------------------------------


def _raw(api, method, path, **kw) -> httpx.Response:
    return httpx.request(method, str(api.base_url).rstrip("/") + path, timeout=60, **kw)


def _error(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_models_retrieve_answers_the_model_object_or_404(api):
    for name in ("base", JOB, f"{JOB}@1"):
        model = api.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "llamafleet")
    with pytest.raises(openai.NotFoundError) as err:
        api.models.retrieve(f"{JOB}@7")
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"


def test_unknown_routes_wrong_methods_and_non_json_bodies_use_the_error_shape(api):
    response = _raw(api, "GET", "/nowhere")
    assert response.status_code == 404
    assert _error(response)["message"] == "Invalid URL (GET /v1/nowhere)"
    response = _raw(api, "GET", "/chat/completions")
    assert response.status_code == 405
    assert _error(response)["type"] == "invalid_request_error"
    response = _raw(
        api, "POST", "/chat/completions", content=b'{"model": "base", "messages": [',
        headers={"content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] is None and "JSON" in error["message"]


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 2.0}, "top_p"),
        ({"n": 0}, "n"),
        ({"n": 129}, "n"),
        ({"stop": [f"s{i}" for i in range(10)]}, "stop"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs=True
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"5": 10}}, "logit_bias"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"tool_choice": "auto"}, "tool_choice"),  # without tools
        (
            {"stream": True, "stream_options": {"include_usage": "x"}},
            "stream_options.include_usage",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
            "response_format.json_schema.name",
        ),
        # these pass the body checks and are refused by the rollout service: param from its
        # field violation (sampling.top_p, sampling.max_tokens)
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
    ],
)
def test_bad_requests_are_400_naming_the_param(api, kwargs, param):
    kwargs = {"max_tokens": 4, **kwargs}
    if "max_completion_tokens" in kwargs:
        del kwargs["max_tokens"]
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}], **kwargs
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == param, err.value.body
    assert err.value.body["type"] == "invalid_request_error"


def test_a_bad_message_names_its_path(api):
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="base", messages=[{"content": "no role"}])
    assert err.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.BadRequestError) as err:  # refused by the data service
        api.chat.completions.create(
            model="base", messages=[{"role": "wizard", "content": "hi"}], max_tokens=2
        )
    assert err.value.body["param"] == "messages", err.value.body


# --- conformance: streaming usage, logprobs, completions, response_format ---------------------


def test_stream_options_include_usage(api):
    plain = _chat(api, "base", n=2, seed=1, temperature=0.8)
    chunks = list(
        _chat(api, "base", n=2, seed=1, temperature=0.8, stream=True,
              stream_options={"include_usage": True})
    )  # fmt: skip
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == {
        **plain.usage.model_dump(exclude_none=True),
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    without = list(_chat(api, "base", stream=True))
    assert all(c.usage is None for c in without)


def _greedy_reference(base_path, prompt_ids, new_tokens):
    """transformers' greedy continuation of ``prompt_ids`` and the log-softmax at each step."""
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    ids = torch.tensor([list(prompt_ids)])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
    )
    completion = out[0, ids.shape[1] :].tolist()
    with torch.inference_mode():
        logits = model(input_ids=out).logits[0].float()
    return completion, torch.log_softmax(logits[len(prompt_ids) - 1 : -1], dim=-1)


def test_logprobs_and_top_logprobs_match_a_transformers_forward(api):
    messages = [{"role": "user", "content": "Say something about Paris."}]
    reply = _chat(api, "base", logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    tokenizer = AutoTokenizer.from_pretrained(api.base_path)
    prompt = api.gateway.backend.prompt_ids(messages)
    completion, reference = _greedy_reference(api.base_path, prompt, len(content))
    assert [c.token for c in content] == [tokenizer.decode([t]) for t in completion]
    for k, entry in enumerate(content):
        assert entry.logprob == pytest.approx(float(reference[k, completion[k]]), abs=1e-4)
        assert bytes(entry.bytes) == entry.token.encode()
        values, ids = reference[k].topk(3)
        assert [t.token for t in entry.top_logprobs] == [tokenizer.decode([i]) for i in ids]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy
    streamed = [
        e
        for c in _chat(api, "base", logprobs=True, top_logprobs=3, stream=True)
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    assert _chat(api, "base").choices[0].logprobs is None


def test_completions_equal_transformers_greedy_generate(api):
    prompt = "Once upon a time"
    reply = api.completions.create(model="base", prompt=prompt, max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and len(reply.choices) == 1
    tokenizer = AutoTokenizer.from_pretrained(api.base_path)
    model = AutoModelForCausalLM.from_pretrained(api.base_path, dtype=torch.float32)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False
    )
    expected = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert reply.choices[0].text == expected
    assert reply.usage.prompt_tokens == ids.shape[1]
    by_ids = api.completions.create(
        model="base", prompt=ids[0].tolist(), max_tokens=6, temperature=0
    )
    assert by_ids.choices[0].text == expected

    chunks = list(
        api.completions.create(model="base", prompt=prompt, max_tokens=6, temperature=0,
                               stream=True, stream_options={"include_usage": True})
    )  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    many = api.completions.create(
        model=JOB, prompt=[prompt, "The sea"], n=2, max_tokens=3, seed=0, echo=True
    )
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert all(
        c.text.startswith(p)
        for c, p in zip(many.choices, [prompt] * 2 + ["The sea"] * 2, strict=True)
    )

    scored = api.completions.create(model="base", prompt=prompt, max_tokens=3, logprobs=2)
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 3
    assert all(len(top) <= 2 for top in lp.top_logprobs)
    with pytest.raises(openai.BadRequestError) as err:
        api.completions.create(model="base", prompt=prompt, suffix="end")
    assert err.value.body["param"] == "suffix"


def test_response_format_is_refused_on_an_engine_without_constrained_decoding(api):
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": "Answer in JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
    assert err.value.body["param"] == "response_format"
    assert "vllm" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:  # OpenAI's own rule for JSON mode
        api.chat.completions.create(
            model="base",
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
    assert err.value.body["param"] == "messages"


# --- conformance: tool calls ------------------------------------------------------------------

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL_TEXT = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>'
)


class _ScriptedRollout:
    """Answers Generate with a fixed text, in two token deltas (the model's side scripted)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def Generate(self, request, timeout=None):
        half = len(self.text) // 2
        for i in range(max(request.sampling.n, 1)):
            for part in (self.text[:half], self.text[half:]):
                yield rollout_service_pb2.GenerateResponse(
                    sequence_index=i, tokens=rollout_pb2.TokenDelta(token_ids=[5], text=part)
                )
            yield rollout_service_pb2.GenerateResponse(
                sequence_index=i,
                finished=rollout_pb2.GenerationFinished(
                    finish_reason=rollout_pb2.FINISH_REASON_STOP,
                    prompt_tokens=7,
                    completion_tokens=2,
                ),
            )


class _Scripted:
    def __init__(self, client, text):
        self.data, self.training, self.rollout = (
            client.data,
            client.training,
            _ScriptedRollout(text),
        )


def _scripted_api(api, text, tool_format="qwen", template=""):
    app = create_app(
        _Scripted(api.client, text), api.base_path, tool_format=tool_format, template=template
    )
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key="x", http_client=TestClient(app), max_retries=0
    )


def _ask(client, **kw):
    return client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Weather in Paris?"}],
        **{"tools": TOOLS, **kw},
    )  # fmt: skip


def test_tool_calls_are_parsed_with_the_template_tool_format(api):
    client = _scripted_api(api, CALL_TEXT)
    choice = _ask(client).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.type, c.function.name) for c in calls] == [("function", "get_weather")] * 2
    assert [json.loads(c.function.arguments) for c in calls] == [
        {"city": "Paris"},
        {"city": "Lyon"},
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)

    # streamed as OpenAI streams calls: deltas with index, id, name and arguments
    chunks = list(_ask(client, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_weather")]
    assert json.loads(deltas[1].function.arguments) == {"city": "Lyon"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # tool_choice "none": the text stays text
    none = _ask(client, tool_choice="none").choices[0]
    assert none.message.content == CALL_TEXT and none.message.tool_calls is None

    # an ordinary answer stays an answer, streamed or not
    plain = _scripted_api(api, "It is sunny in Paris.")
    assert _ask(plain).choices[0].message.content == "It is sunny in Paris."
    streamed = list(_ask(plain, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == (
        "It is sunny in Paris."
    )
    assert streamed[-1].choices[0].finish_reason == "stop"

    # the llama3 format reads another text: the format really is the server's
    llama3 = _scripted_api(api, '{"name": "get_weather", "parameters": {"city": "Nice"}}', "llama3")
    (call,) = _ask(llama3).choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"city": "Nice"}

    # --template alone: conversations rendered with that data-service template, calls read in
    # its tool format (LLaMA-Factory's `default` template: "Action:" lines)
    action = 'Action: get_weather\nAction Input: {"city": "Oslo"}'
    by_template = _scripted_api(api, action, tool_format="", template="default")
    (call,) = _ask(by_template).choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Oslo"},
    )


def test_tool_choice_forcing_is_refused_on_an_engine_without_constrained_decoding(api):
    """The real cluster's engine is hf: a forced call needs constrained decoding, so 400 naming
    tool_choice, the engine and the one that has it; the request is checked before that."""
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        with pytest.raises(openai.BadRequestError) as err:
            _ask(api, tool_choice=choice)  # no --tool-format needed: nothing is parsed
        assert err.value.body["param"] == "tool_choice"
        message = err.value.body["message"]
        assert "constrained decoding" in message and "hf engine" in message and "vllm" in message
        with pytest.raises(openai.BadRequestError) as err:
            _ask(api, tool_choice=choice, stream=True)
        assert err.value.body["param"] == "tool_choice"
    with pytest.raises(openai.BadRequestError) as err:
        _ask(api, tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert err.value.body["param"] == "tool_choice" and "get_weather" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        _ask(api, tool_choice="required", response_format={"type": "json_object"})
    assert err.value.body["param"] == "response_format"
    with pytest.raises(openai.BadRequestError) as err:
        _ask(api)  # tool_choice auto: the real server was started without --tool-format
    assert err.value.body["param"] == "tools"
    assert "--tool-format" in err.value.body["message"]


class _Recording(_ScriptedRollout):
    def Generate(self, request, timeout=None):
        self.request = request
        return super().Generate(request, timeout)


def test_forced_tool_choice_sends_the_call_schema_and_reads_the_json_back(api):
    """What the engine is asked for (the call's JSON Schema as structured output, as vLLM's
    server builds it) and how its JSON output becomes tool_calls, the engine scripted (the real
    vLLM side: tests/clients/test_openai_tool_choice_vllm.py)."""
    import jsonschema

    def client_for(text):
        backend = _Scripted(api.client, text)
        backend.rollout = _Recording(text)
        app = create_app(backend, api.base_path)  # no tool format: nothing is parsed
        http = TestClient(app)
        return backend.rollout, openai.OpenAI(
            base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0
        )

    two = [*TOOLS, {"type": "function", "function": {"name": "now"}}]
    text = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "now", ' \
        '"parameters": {}}]'  # fmt: skip
    rollout, client = client_for(text)
    choice = _ask(client, tools=two, tool_choice="required").choices[0]
    schema = json.loads(rollout.request.sampling.structured_output.json_schema)
    jsonschema.validate(json.loads(text), schema)
    for bad in ([], [{"name": "get_weather", "parameters": {}}], [{"name": "x", "parameters": {}}]):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in
            choice.message.tool_calls] == [("get_weather", {"city": "Paris"}), ("now", {})]  # fmt: skip
    _ask(client, tools=two, tool_choice="required", parallel_tool_calls=False)
    assert json.loads(rollout.request.sampling.structured_output.json_schema)["maxItems"] == 1

    named = {"type": "function", "function": {"name": "get_weather"}}
    rollout, client = client_for('{"city": "Lyon"}')
    (call,) = _ask(client, tool_choice=named).choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "Lyon"}
    )  # fmt: skip
    schema = json.loads(rollout.request.sampling.structured_output.json_schema)
    assert schema == TOOLS[0]["function"]["parameters"]
    chunks = list(_ask(client, tool_choice=named, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "get_weather", '{"city": "Lyon"}')
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # output that is not the whole JSON (cut short) is no call: the text stays the content
    _, client = client_for('{"city": "Ly')
    cut = _ask(client, tool_choice=named).choices[0]
    assert cut.message.tool_calls is None and cut.message.content == '{"city": "Ly'


# --- evaluation: predictions through the fleet ------------------------------------------------


def test_cli_eval_predict_writes_predictions_and_metrics(api, tmp_path, capsys):
    """`llamafleet eval predict` on an alpaca split with the job's adapter: each prediction is
    what the OpenAI route answers for the same conversation (greedy), the metrics are
    ``eval_metrics.similarity`` of the file's rows, and the exact_match reward's mean counts the
    one record whose label was set to the model's own answer."""
    from llamafleet.eval_metrics import similarity

    questions = ["Say something about Paris.", "Count to three.", "Name a colour."]
    answers = [
        _chat(api, JOB, max_tokens=6, messages=[{"role": "user", "content": q}])
        .choices[0]
        .message.content
        for q in questions
    ]
    records = [
        {"instruction": questions[0], "output": answers[0]},  # the model's own answer
        {"instruction": questions[1], "output": "one two three"},
        {"instruction": questions[2], "output": "blue"},
    ]
    split = tmp_path / "eval.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in records))
    save = tmp_path / "out"
    argv = [
        "eval", "predict", "--run-dir", api.run_dir, "--model", JOB, "--dataset", str(split),
        "--save-dir", str(save), "--max-tokens", "6", "--reward-function", "exact_match",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (save / "predictions.jsonl").read_text().splitlines()]
    assert [r["predict"] for r in rows] == answers
    assert [r["label"] for r in rows] == [r["output"] for r in records]
    assert all(questions[k] in rows[k]["prompt"] for k in range(3))
    expected = similarity(answers, [r["output"] for r in records])
    assert expected["exact_match"] == pytest.approx(100 / 3)
    for name, value in expected.items():
        assert printed[f"predict_{name}"] == pytest.approx(value)
    assert printed["predict_reward/exact_match"] == pytest.approx(1 / 3)
    assert json.loads((save / "predict_results.json").read_text()) == printed
    bad = ["eval", "predict", "--run-dir", api.run_dir, "--dataset", str(split), "--save-dir",
           str(save), "--format", "nope"]  # fmt: skip
    assert cli.main(bad) == 2


def test_cli_eval_predict_averages_a_reward_model(api, tmp_path, capsys):
    """`--reward-model rmjob@1`: each prediction's ``reward_model`` is the reward adapter's score
    computed here by hand (peft's SEQ_CLS model over the prompt ids and the generated ids, read
    at the reply's last end token, or its last token when it has none), and the printed mean is
    their mean. A malformed name is a usage error that names the flag's format."""
    from llamafleet.data.v1 import data_pb2, data_service_pb2
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from services.common.scored_position import folder_eos_ids

    records = [
        {"instruction": "Say something about Paris.", "output": "x"},
        {"instruction": "Name a colour.", "output": "blue"},
    ]
    split = tmp_path / "eval.jsonl"
    split.write_text("".join(json.dumps(r) + "\n" for r in records))
    save = tmp_path / "out"
    argv = [
        "eval", "predict", "--run-dir", api.run_dir, "--model", JOB, "--dataset", str(split),
        "--save-dir", str(save), "--max-tokens", "6", "--reward-model", f"{RM_JOB}@1",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in (save / "predictions.jsonl").read_text().splitlines()]

    model = AutoModelForSequenceClassification.from_pretrained(api.base_path, num_labels=1)
    model.config.pad_token_id = 0
    job_dir = Path(api.run_dir) / "jobs" / RM_JOB / "adapters" / "v1"
    rm = PeftModel.from_pretrained(model, job_dir).eval()
    ends = set(folder_eos_ids(Path(api.base_path)))
    expected = []
    for record, row in zip(records, rows, strict=True):
        seq = api.client.data.PreviewExample(
            data_service_pb2.PreviewExampleRequest(
                record_json=json.dumps(record),
                format=data_pb2.FormatOptions(format=data_pb2.DATASET_FORMAT_ALPACA),
                kind=data_pb2.EXAMPLE_KIND_PROMPT,
                tokenization=data_pb2.TokenizationOptions(tokenizer_path=api.base_path),
            )
        ).sequences[0]
        replies = api.client.rollout.Generate(
            rollout_service_pb2.GenerateRequest(
                prompt_ids=seq.input_ids,
                adapter=api.gateway.backend.adapter(JOB),
                sampling=rollout_pb2.SamplingParams(temperature=0.0, max_tokens=6, n=1),
            )
        )
        completion = [t for r in replies if r.HasField("tokens") for t in r.tokens.token_ids]
        at = max((k for k, t in enumerate(completion) if t in ends), default=len(completion) - 1)
        ids = list(seq.input_ids) + completion[: at + 1]
        with torch.no_grad():
            expected.append(rm(input_ids=torch.tensor([ids])).logits[0, 0].item())
        assert row["reward_model"] == pytest.approx(expected[-1], abs=1e-4)
    assert len(set(round(v, 4) for v in expected)) == 2  # the two replies score differently
    mean = sum(expected) / len(expected)
    assert printed[f"predict_reward_model/{RM_JOB}@1"] == pytest.approx(mean, abs=1e-4)

    bad = argv[:-1] + [RM_JOB]  # no version
    assert cli.main(bad) == 2
    assert "JOB@VERSION" in capsys.readouterr().err


# --- evaluation: multiple-choice benchmark on the training service ----------------------------


@pytest.mark.slow
def test_cli_eval_benchmark_runs_on_the_training_service(api, tmp_path, capsys):
    """`llamafleet eval benchmark` (RunBenchmark: a process of the training service, prompts
    rendered by the data service) on the base model and on the job's adapter: the tables equal
    the in-process scorer's over the same rendering (``run_benchmark`` with the data service),
    results are saved, and bad requests name their field."""
    from services.training.evaluation.__main__ import (
        data_service_render,
        load_model,
        run_benchmark,
    )
    from tests.training.test_benchmark import write_task

    root = Path(api.base_path).parent
    task_dir = write_task(root / "tasks")
    save = root / "bench-out"
    argv = ["eval", "benchmark", "--run-dir", api.run_dir, "--task-dir", str(task_dir), "--task",
            "synth", "--split", "test", "--n-shot", "2", "--json"]  # fmt: skip
    for model, adapter in (("base", ""), (f"{JOB}@1", str(Path(api.run_dir) / "jobs" / JOB))):
        assert cli.main([*argv, "--model", model, "--save-dir", str(save / model)]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["total"] == 16 and [s["subject"] for s in got["subjects"]] == ["alpha", "beta"]
        loaded = load_model(api.base_path, adapter and f"{adapter}/adapters/v1")
        render = data_service_render(api.client.addresses["data"], "", api.base_path, "")
        request = {"task_dir": str(task_dir), "task": "synth", "split": "test", "n_shot": 2,
                   "lang": "en"}  # fmt: skip
        expected = run_benchmark(request, *loaded, render)
        assert got["accuracy"] == pytest.approx(expected["accuracy"])
        assert [s["correct"] for s in got["subjects"]] == [
            s["correct"] for s in expected["subjects"]
        ]
        assert json.loads((save / model / "results.json").read_text())["total"] == 16

    with pytest.raises(Exception) as err:
        api.client.training.RunBenchmark(
            training_service_pb2.RunBenchmarkRequest(
                base_model=api.base_path, task_dir=str(task_dir), task="synth", lang="fr"
            )
        )
    assert err.value.violations[0][0] == "lang"
    with pytest.raises(Exception) as err:
        api.client.training.RunBenchmark(
            training_service_pb2.RunBenchmarkRequest(
                base_model=api.base_path, task_dir=str(task_dir), task="missing"
            )
        )
    assert "missing is not a folder" in err.value.message
