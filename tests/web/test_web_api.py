"""The web UI's JSON API: form -> YAML -> spec, registry preview, jobs, chat and cluster, with
their error paths. Most tests use the shared real cluster; the first few need no services."""

from __future__ import annotations

import re
import time
from pathlib import Path

import grpc
import pytest
import yaml
from fastapi.testclient import TestClient
from llamafleet import cli
from llamafleet.client import Client, RpcError
from llamafleet.lf_config import load_job_spec
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.web import forms
from llamafleet.web.app import _highlight, create_app

from services.training.spec.validation import validate


def _form(web_cluster, **over):
    form = {
        "model_name_or_path": web_cluster.base_model,
        "dataset_dir": web_cluster.dataset_dir,
        "dataset": web_cluster.dataset,
        "stage": "sft",
        "finetuning_type": "lora",
        "lora_rank": 4,
        "lora_target": "q_proj,v_proj",
        "freeze_trainable_layers": 1,  # another method's key: left out of the YAML
        "pref_beta": 0.2,  # another stage's key: left out too
        "cutoff_len": 64,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "logging_steps": 1,
        "use_dora": False,
        "template": "",
    }
    return {**form, **over}


@pytest.fixture(scope="module")
def http(web_cluster):
    app = create_app(web_cluster.client, web_cluster.run_dir, web_cluster.base_model)
    with TestClient(app) as client:
        yield client


# --- without services --------------------------------------------------------------------


def test_a_token_guards_every_api_call_but_not_the_page():
    with Client({}) as client, TestClient(create_app(client, token="s3cret")) as http:
        assert http.get("/").status_code == 200 and "<title>llamafleet" in http.get("/").text
        assert http.get("/static/app.js").status_code == 200
        assert http.get("/api/info").status_code == 401
        assert http.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        reply = http.get("/api/info", headers={"Authorization": "Bearer s3cret"})
        assert reply.status_code == 200 and reply.json()["stages"] == list(forms.STAGES)


def test_web_refuses_a_public_host_without_a_token(capsys):
    assert cli.main(["web", "--host", "0.0.0.0", "--run-dir", "/nonexistent"]) == 2
    assert "without --token" in capsys.readouterr().err


class _Refusing:
    """A training service that implements no stage yet."""

    def CreateTrainingJob(self, request, **kw):
        raise RpcError(grpc.StatusCode.UNIMPLEMENTED, "spec.stage: STAGE_DPO is not implemented")


def test_a_stage_the_service_refuses_is_shown_with_its_message(tmp_path):
    client = Client({})
    client.training = _Refusing()
    text = "model_name_or_path: /m\nstage: dpo\ndataset: pairs\ndataset_dir: /d\n"
    with TestClient(create_app(client)) as http:
        reply = http.post("/api/jobs", json={"yaml": text})
    assert reply.status_code == 501
    assert reply.json()["code"] == "UNIMPLEMENTED"
    assert "STAGE_DPO is not implemented" in reply.json()["error"]


def test_highlight_marks_the_response_not_the_prompt_that_repeats_it():
    text = "user: Repeat: w00\nassistant: w00</s>\n"
    segments = _highlight(text, ["w00</s>"])
    assert "".join(s["text"] for s in segments) == text
    assert [s["text"] for s in segments if s["trained"]] == ["w00</s>"]
    assert segments[0] == {"text": "user: Repeat: w00\nassistant: ", "trained": False}
    assert _highlight("abc", ["zzz"]) == [{"text": "abc", "trained": False}]


def test_only_the_keys_of_the_chosen_stage_and_method_reach_the_yaml():
    flat = forms.to_flat(
        {"model_name_or_path": "/m", "dataset": "d", "stage": "dpo", "finetuning_type": "freeze",
         "lora_rank": 8, "freeze_trainable_layers": 2, "pref_beta": 0.2, "reward_scorer": "x",
         "max_steps": "", "use_dora": False, "packing": False}
    )  # fmt: skip
    assert flat == {
        "model_name_or_path": "/m", "stage": "dpo", "finetuning_type": "freeze",
        "freeze_trainable_layers": 2, "pref_beta": 0.2, "dataset": "d",
    }  # fmt: skip


def _grpo_form(**over):
    """The Train form as the page sends it for GRPO: its defaults, GRPO's keys set, and keys of
    other stages and methods filled in (left out of the YAML)."""
    return {
        **forms.DEFAULTS, "model_name_or_path": "/m", "dataset": "d", "stage": "grpo",
        "reward_scorer": "exact_match", "num_generations": 4, "loss_type": "dr_grpo",
        "epsilon_high": 0.28, "beta": 0.04, "scale_rewards": "none",
        "mask_truncated_completions": True, "temperature": 0.9, "ppo_target": 6.0,
        "pref_beta": 0.2, "use_galore": True, **over,
    }  # fmt: skip


def test_a_grpo_form_renders_yaml_that_llamafleet_train_reads(tmp_path):
    text = forms.to_yaml(_grpo_form())
    data = yaml.safe_load(text)
    assert data["stage"] == "grpo" and data["finetuning_type"] == "lora"
    grpo_keys = {"num_generations": 4, "num_iterations": 1, "loss_type": "dr_grpo",
                 "epsilon": 0.2, "epsilon_high": 0.28, "beta": 0.04, "scale_rewards": "none",
                 "mask_truncated_completions": True, "reward_scorer": "exact_match",
                 "max_new_tokens": 64, "temperature": 0.9}  # fmt: skip
    assert {k: data.get(k) for k in grpo_keys} == grpo_keys
    # PPO's own keys, DPO's and another method's stay out
    for key in ("ppo_epochs", "ppo_target", "pref_beta", "pref_loss", "use_galore"):
        assert key not in data, key
    path = tmp_path / "grpo.yaml"
    path.write_text(text)
    spec = load_job_spec(path)[0]
    assert spec == forms.to_spec(text)[0]
    assert spec.stage == pb.STAGE_GRPO and spec.finetuning.type == pb.FINETUNING_TYPE_LORA
    assert spec.ppo.sampling.n == 4 and spec.ppo.sampling.max_tokens == 64
    assert spec.ppo.sampling.temperature == pytest.approx(0.9)
    assert spec.ppo.ppo_epochs == 1 and spec.ppo.reward_scorer == "exact_match"
    assert not spec.ppo.adaptive_kl  # ppo_target was left out
    g = spec.grpo
    assert g.loss_type == pb.GRPO_LOSS_TYPE_SEQ_MEAN_TOKEN_SUM_NORM
    assert (g.epsilon, g.epsilon_high, g.beta) == pytest.approx((0.2, 0.28, 0.04))
    assert g.scale_rewards == pb.REWARD_SCALING_NONE and g.mask_truncated_completions
    # the keys shared with ppo still reach a ppo YAML, GRPO's do not
    ppo = yaml.safe_load(forms.to_yaml(_grpo_form(stage="ppo")))
    assert ppo["reward_scorer"] == "exact_match" and ppo["ppo_epochs"] == 4
    assert not {"num_generations", "loss_type", "beta", "epsilon"} & set(ppo)


def test_the_page_loads_nothing_from_outside():
    static = Path(forms.__file__).parent / "static"
    for path in static.iterdir():
        text = path.read_text()
        urls = re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s\"')]*", text)
        assert [u for u in urls if "www.w3.org/2000/svg" not in u] == [], path.name


# --- against the cluster -----------------------------------------------------------------


def test_info_offers_every_stage_and_sensible_defaults(http, web_cluster):
    info = http.get("/api/info").json()
    assert info["stages"] == ["pt", "sft", "rm", "dpo", "ppo", "grpo"]
    assert info["methods"] == ["lora", "freeze", "full"]
    assert info["defaults"]["model_name_or_path"] == web_cluster.base_model
    assert info["defaults"]["learning_rate"] > 0 and info["defaults"]["lora_rank"] == 8


def test_the_registry_lists_its_entries(http, web_cluster):
    reply = http.get("/api/datasets", params={"dataset_dir": web_cluster.dataset_dir})
    names = [d["name"] for d in reply.json()["datasets"]]
    assert names == ["from_hub", "pairs", web_cluster.dataset]
    missing = http.get("/api/datasets", params={"dataset_dir": "/no/such/dir"})
    assert missing.status_code == 400 and "no dataset_info.json" in missing.json()["error"]


def test_preview_shows_the_rendered_record_and_its_trained_span(http, web_cluster):
    reply = http.post("/api/preview", json=_form(web_cluster))
    assert reply.status_code == 200, reply.text
    (seq,) = reply.json()["sequences"]
    trained = [s["text"] for s in seq["segments"] if s["trained"]]
    assert len(trained) == 1 and trained[0].startswith("w00")
    untrained = "".join(s["text"] for s in seq["segments"] if not s["trained"])
    assert "Repeat: w00" in untrained
    assert "".join(s["text"] for s in seq["segments"]) == seq["text"]
    assert 0 < seq["trained_tokens"] < seq["tokens"]

    pairs = http.post("/api/preview", json=_form(web_cluster, stage="dpo", dataset="pairs"))
    assert [s["name"] for s in pairs.json()["sequences"]] == ["chosen", "rejected"]


def test_preview_errors_say_what_is_wrong(http, web_cluster):
    hub = http.post("/api/preview", json=_form(web_cluster, dataset="from_hub"))
    assert hub.status_code == 400 and "hub" in hub.json()["error"]
    unknown = http.post("/api/preview", json=_form(web_cluster, dataset="nope"))
    assert unknown.status_code == 400 and "no dataset 'nope'" in unknown.json()["error"]
    template = http.post("/api/preview", json=_form(web_cluster, template="no-such-template"))
    assert template.status_code == 400 and "no-such-template" in template.json()["error"]


def test_the_yaml_shown_is_what_llamafleet_train_reads(http, web_cluster, tmp_path):
    reply = http.post("/api/yaml", json=_form(web_cluster))
    assert reply.status_code == 200, reply.text
    text = reply.json()["yaml"]
    data = yaml.safe_load(text)
    assert data["max_steps"] == 3 and data["lora_target"] == "q_proj,v_proj"
    assert "freeze_trainable_layers" not in data and "pref_beta" not in data
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert load_job_spec(path)[0] == forms.to_spec(text)[0]


def test_a_grpo_form_passes_the_training_services_checks_and_previews_prompts(http, web_cluster):
    form = _form(web_cluster, stage="grpo", reward_scorer="exact_match", num_generations=2,
                 loss_type="seq-mean-token-sum-norm", max_new_tokens=8)  # fmt: skip
    reply = http.post("/api/yaml", json=form)
    assert reply.status_code == 200, reply.text
    spec = forms.to_spec(reply.json()["yaml"])[0]
    assert spec.stage == pb.STAGE_GRPO and spec.ppo.sampling.n == 2
    validate(spec)  # the training service's own spec check: raises naming a bad field
    preview = http.post("/api/preview", json=form)
    assert preview.status_code == 200, preview.text
    (seq,) = preview.json()["sequences"]
    assert "Repeat: w00" in seq["text"] and seq["trained_tokens"] == 0  # a prompt, no answer


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"lora_rank": "many"}, "lora_rank: expected an integer"),
        ({"learning_rate": "fast"}, "learning_rate: expected a number"),
        ({"lr_scheduler_type": "zigzag"}, "lr_scheduler_type: 'zigzag' is not supported"),
        ({"dataset": ""}, "dataset: required"),
        ({"stage": "kto"}, "stage: 'kto' is not one of pt, sft, rm, dpo, ppo, grpo"),
        ({"finetuning_type": "qlora"}, "finetuning_type: 'qlora' is not one of"),
        ({"lora_rnak": 4}, "lora_rnak: not a LLaMA-Factory key"),
        ({"val_size": 2}, "val_size: give the eval split as a fraction"),
    ],
)
def test_bad_form_values_get_a_clear_message(http, web_cluster, change, message):
    reply = http.post("/api/yaml", json=_form(web_cluster, **change))
    assert reply.status_code == 400
    assert message in reply.json()["error"]


def test_job_errors_come_back_with_the_services_message(http, web_cluster):
    bad = http.post("/api/jobs", json={"yaml": "stage: [sft"})
    assert bad.status_code == 400 and "not valid YAML" in bad.json()["error"]
    assert http.post("/api/jobs", json={}).status_code == 400
    ppo = http.post("/api/yaml", json=_form(web_cluster, stage="ppo")).json()["yaml"]
    refused = http.post("/api/jobs", json={"yaml": ppo})
    assert refused.status_code == 400 and refused.json()["code"] == "INVALID_ARGUMENT"
    assert "reward_scorer" in refused.json()["error"]


def test_unknown_job_is_404(http):
    for reply in (
        http.get("/api/jobs/no-such-job"),
        http.get("/api/jobs/no-such-job/events"),
        http.post("/api/jobs/no-such-job/cancel"),
    ):
        assert reply.status_code == 404 and "no-such-job" in reply.json()["error"]


def test_a_job_runs_and_its_events_page_by_sequence(http, web_cluster):
    text = http.post("/api/yaml", json=_form(web_cluster, job_id="api-sft")).json()["yaml"]
    created = http.post("/api/jobs", json={"yaml": text})
    assert created.status_code == 200, created.text
    assert created.json()["job"]["id"] == "api-sft"
    events, after, deadline = [], 0, time.monotonic() + 120
    while time.monotonic() < deadline:
        page = http.get("/api/jobs/api-sft/events", params={"after": after}).json()
        assert all(e["sequence"] > after for e in page["events"])
        events += page["events"]
        after = events[-1]["sequence"] if events else after
        if page["job"]["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.3)
    assert page["job"]["state"] == "SUCCEEDED", page["job"]["failure_message"]
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1))
    losses = [e["loss"] for e in events if e["kind"] == "metrics"]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    listed = {j["id"]: j for j in http.get("/api/jobs").json()["jobs"]}
    assert listed["api-sft"]["state"] == "SUCCEEDED" and listed["api-sft"]["adapter_versions"]
    again = http.post("/api/jobs/api-sft/cancel")  # a finished job is returned unchanged
    assert again.status_code == 200 and again.json()["state"] == "SUCCEEDED"


def test_chat_with_the_base_model_and_its_errors(http):
    reply = http.post(
        "/api/chat",
        json={"model": "base", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
              "temperature": 0},
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    assert reply.json()["reply"] and 0 < reply.json()["completion_tokens"] <= 4
    unknown = http.post(
        "/api/chat", json={"model": "ghost", "messages": [{"role": "user", "content": "x"}]}
    )
    assert unknown.status_code == 404 and "does not exist" in unknown.json()["error"]
    empty = http.post("/api/chat", json={"model": "base", "messages": []})
    assert empty.status_code == 400 and "messages" in empty.json()["error"]
    role = http.post("/api/chat", json={"messages": [{"role": "robot", "content": "x"}]})
    assert role.status_code == 400 and "role" in role.json()["error"]


def test_cluster_reports_each_service(http):
    report = http.get("/api/cluster").json()
    assert set(report["services"]) == {"data", "training", "rollout", "reward"}
    assert all(s["health"] == "SERVING" for s in report["services"].values())
    assert report["redis"] == "up" and report["dead_letters"] == 0
