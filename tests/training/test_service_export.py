"""ExportModel with a real tiny Llama and a real peft LoRA adapter: merged or adapter only.

The merged folder must compute what the base + adapter computes: its logits are compared with
``PeftModel``'s on the same input (float32, tolerance 1e-5).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpc
import pytest
import torch
from llamafleet.client import RpcError
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from peft import LoraConfig, PeftModel, get_peft_model
from training_harness import (
    TrainingService,
    config,
    fake_launcher,
    kill_runners,
    make_spec,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.training.tiny.model import build_tiny_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    base = build_tiny_model(tmp / "base", seed=3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    torch.manual_seed(0)
    get_peft_model(model, lora).save_pretrained(tmp / "adapter_src")

    def launcher(spec, job_dir, data_address, token):
        argv, env = fake_launcher(spec, job_dir, data_address, token)
        return argv, {**env, "FAKE_ADAPTER_SRC": str(tmp / "adapter_src")}

    service = TrainingService(config(tmp / "jobs"), launcher=launcher)
    spec = make_spec(base, "lora-1", steps=2, save_steps=1)
    service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    request = api.WatchTrainingJobRequest(job_id="lora-1")
    list(service.training.WatchTrainingJob(request, timeout=60))
    yield service, base, tmp
    service.stop()
    kill_runners(tmp / "jobs")


def export(service, out, mode, version=0, job_id="lora-1") -> api.ExportModelResponse:
    request = api.ExportModelRequest(job_id=job_id, version=version, mode=mode, output_dir=str(out))
    return service.training.ExportModel(request, timeout=120)


def test_merged_export_computes_what_base_plus_adapter_computes(setup):
    service, base, tmp = setup
    reply = export(service, tmp / "merged", pb.EXPORT_MODE_MERGED)
    assert reply.version == 2 and reply.mode == pb.EXPORT_MODE_MERGED
    assert reply.output_dir == str(tmp / "merged")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(reply.files)
    assert reply.files == sorted(reply.files)
    assert not any("adapter" in f for f in reply.files)

    tokenizer = AutoTokenizer.from_pretrained(tmp / "merged")
    ids = torch.tensor([tokenizer.encode("The cat sat on the mat. 12 + 30 = 42")])
    merged = AutoModelForCausalLM.from_pretrained(tmp / "merged", dtype=torch.float32).eval()
    base_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    adapter = tmp / "jobs" / "lora-1" / "adapters" / "v2"
    reference = PeftModel.from_pretrained(base_model, adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        want, got, before = reference(ids).logits, merged(ids).logits, plain(ids).logits
    assert (want - before).abs().max() > 1e-3  # the adapter does change the output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_adapter_only_export_is_the_peft_folder(setup):
    service, _, tmp = setup
    reply = export(service, tmp / "adapter", pb.EXPORT_MODE_ADAPTER_ONLY, version=1)
    assert reply.version == 1
    source = sorted(p.name for p in (tmp / "adapter_src").iterdir())
    assert list(reply.files) == source
    for name in source:
        assert (tmp / "adapter" / name).read_bytes() == (tmp / "adapter_src" / name).read_bytes()


def test_export_errors(setup):
    service, _, tmp = setup
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("taken")
    cases = [
        (dict(out=tmp / "e1", mode=pb.EXPORT_MODE_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT),
        (dict(out=tmp / "full", mode=pb.EXPORT_MODE_MERGED), grpc.StatusCode.FAILED_PRECONDITION),
        (dict(out=tmp / "e2", mode=pb.EXPORT_MODE_MERGED, version=7), grpc.StatusCode.NOT_FOUND),
        (dict(out=tmp / "e3", mode=pb.EXPORT_MODE_MERGED, job_id="x"), grpc.StatusCode.NOT_FOUND),
    ]
    for kwargs, code in cases:
        with pytest.raises(RpcError) as err:
            export(service, **kwargs)
        assert err.value.code == code, kwargs
    assert not (tmp / "e2").exists() and (tmp / "full" / "x").read_text() == "taken"


def test_full_finetuning_exports_its_model_folder_and_has_no_adapter(setup):
    service, base, tmp = setup
    spec = make_spec(base, "full-1", steps=2, save_steps=1)
    spec.finetuning.type = pb.FINETUNING_TYPE_FULL
    service.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
    request = api.WatchTrainingJobRequest(job_id="full-1")
    list(service.training.WatchTrainingJob(request, timeout=60))
    job = service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="full-1")).job
    assert job.adapter_id == "" and not job.adapter_versions

    with pytest.raises(RpcError) as err:  # no model folder written yet
        export(service, tmp / "f1", pb.EXPORT_MODE_MERGED, job_id="full-1")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(RpcError) as err:
        export(service, tmp / "f2", pb.EXPORT_MODE_ADAPTER_ONLY, job_id="full-1")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(RpcError) as err:
        export(service, tmp / "f3", pb.EXPORT_MODE_MERGED, version=1, job_id="full-1")
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT

    model_dir = tmp / "jobs" / "full-1" / "model"  # what a full fine-tuning runner writes
    model_dir.mkdir()
    for name in ("config.json", "model.safetensors"):
        (model_dir / name).write_bytes((base / name).read_bytes())
    reply = export(service, tmp / "f4", pb.EXPORT_MODE_MERGED, job_id="full-1")
    assert reply.version == 0
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(reply.files)
