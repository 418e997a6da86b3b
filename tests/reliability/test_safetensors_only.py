"""Weights load only through safetensors, and adapter transfers are all-or-nothing.

A pickle (``pytorch_model.bin``, ``adapter_model.bin``) can run code when it is loaded; even
``torch.load(weights_only=True)`` is an unpickler, and adapters reach the rollout and reward
services over the network. So every service that loads weights refuses a folder whose only
weights are a pickle, with an error that says so, before any unpickler runs:

- rollout: its base model (start-up), and adapters fetched from the training service;
- reward: its reward model / base model (start-up), and reward adapters;
- training: the base model of a job (``job_specs.validate`` and ``recipes.validate`` at
  CreateTrainingJob, and ``models.load_base``).

Adapter transfer (item 13): a byte flipped in transit is caught by the sha256 and leaves nothing
in the cache; a transfer whose process is SIGKILLed leaves no file under a hash name, and the next
fetch succeeds. ``tests/common/test_adapter_cache.py`` covers a lying sha256, a stream cut by a
deadline, resume after a broken stream and unsafe archives; these tests add the flipped byte
through a real rollout service and a real kill.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import torch
from llamafleet.common.v1 import common_pb2
from llamafleet.rollout.v1 import rollout_service_pb2, rollout_service_pb2_grpc
from llamafleet.training.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc
from safetensors.torch import load_file

from services.common import errors
from services.common.adapter_cache import AdapterCache
from services.common.server import ServiceHost
from services.rollout.config import RolloutConfig
from services.rollout.generator import Generator
from services.rollout.server import make_register as rollout_register

REPO = Path(__file__).resolve().parents[2]
CHUNK = 4096


# -- folders ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from services.training.tiny.model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("st") / "tiny", "tiny", seed=0)


def pickle_only_model(source: Path, out: Path) -> Path:
    """``source`` with its weights re-saved as ``pytorch_model.bin`` (a pickle) only."""
    out.mkdir(parents=True)
    state = {}
    for item in source.iterdir():
        if item.suffix == ".safetensors":
            state.update(load_file(str(item)))
        elif not item.name.endswith(".safetensors.index.json"):
            (out / item.name).write_bytes(item.read_bytes())
    torch.save(state, out / "pytorch_model.bin")
    return out


def make_adapter(base: Path, out: Path, *, safetensors: bool, task: str = "CAUSAL_LM") -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if task == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
        config = LoraConfig(
            r=4, target_modules=["q_proj"], task_type="SEQ_CLS", modules_to_save=["score"]
        )
    else:
        model = AutoModelForCausalLM.from_pretrained(str(base))
        config = LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(str(out), safe_serialization=safetensors)
    return out


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folders")
    out = {
        "pickle_model": pickle_only_model(tiny, root / "pickle-model"),
        "st_adapter": make_adapter(tiny, root / "st-adapter", safetensors=True),
        "pickle_adapter": make_adapter(tiny, root / "pickle-adapter", safetensors=False),
        "pickle_rm_adapter": make_adapter(
            tiny, root / "pickle-rm-adapter", safetensors=False, task="SEQ_CLS"
        ),
    }
    assert (out["pickle_adapter"] / "adapter_model.bin").is_file()
    assert not list(out["pickle_adapter"].glob("*.safetensors"))
    assert not list(out["pickle_model"].glob("*.safetensors"))
    return out


# -- a training service that serves adapter archives (FetchAdapter only) ----------------------


def tar_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for item in sorted(folder.iterdir()):
            tar.add(str(item), arcname=item.name)
    return buf.getvalue()


class Adapters(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self) -> None:
        self.blobs: dict[tuple[str, int], bytes] = {}
        self.flip_at: int | None = None  # flip this byte of the stream (sha256 stays the truth)
        self.stall_after: int | None = None  # stop sending (hang) after this many chunks
        self.sent = threading.Event()
        self.release = threading.Event()

    def FetchAdapter(self, request, context):
        key = (request.adapter.id, request.adapter.version)
        if key not in self.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no adapter {key}")
        blob = self.blobs[key]
        info = training_pb2.AdapterBlobInfo(
            adapter=request.adapter,
            total_size=len(blob),
            sha256=hashlib.sha256(blob).hexdigest(),
            format=training_pb2.ADAPTER_FORMAT_PEFT_TAR,
        )
        sent_bytes = bytearray(blob)
        if self.flip_at is not None:
            sent_bytes[self.flip_at] ^= 0x01
        offset, n = request.offset, 0
        while offset < len(blob):
            if self.stall_after is not None and n >= self.stall_after:
                self.sent.set()
                self.release.wait(30)  # the client is killed meanwhile
                return
            chunk = training_pb2.AdapterChunk(
                offset=offset, data=bytes(sent_bytes[offset : offset + CHUNK])
            )
            if n == 0:
                chunk.info.CopyFrom(info)
            yield training_service_pb2.FetchAdapterResponse(chunk=chunk)
            offset, n = offset + CHUNK, n + 1


@pytest.fixture
def training():
    servicer = Adapters()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    servicer.address = f"127.0.0.1:{port}"
    yield servicer
    servicer.release.set()
    server.stop(0)


def ref(adapter_id: str, version: int = 1) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=adapter_id, version=version)


def hashed_entries(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in cache_dir.iterdir() if not p.name.startswith("."))


def with_rollout(tiny: Path, training_address: str, cache_dir: Path, scenario):
    """A real rollout service (ServiceHost, port 0) serving ``tiny``; runs ``scenario(stub)``."""

    async def main():
        config = RolloutConfig(
            base_model=str(tiny),
            device="cpu",
            training_address=training_address,
            adapter_cache_dir=str(cache_dir),
            shutdown_delay_s=0,
            grace_s=0.5,
        )
        host = ServiceHost("rollout", config, rollout_register(config))
        await host.start()
        try:
            async with grpc.aio.insecure_channel(host.address) as channel:
                return await scenario(rollout_service_pb2_grpc.RolloutServiceStub(channel))
        finally:
            await host.stop(grace=0)

    return asyncio.run(asyncio.wait_for(main(), timeout=120))


async def load_adapter(stub, adapter_id: str) -> tuple[grpc.StatusCode, str]:
    try:
        await stub.LoadAdapter(
            rollout_service_pb2.LoadAdapterRequest(adapter=ref(adapter_id)), timeout=60
        )
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details()
    return grpc.StatusCode.OK, ""


async def generate_ok(stub, adapter_id: str = "") -> bool:
    request = rollout_service_pb2.GenerateRequest(prompt_text="hi")
    request.sampling.max_tokens = 2
    if adapter_id:
        request.adapter.CopyFrom(ref(adapter_id))
    replies = [r async for r in stub.Generate(request, timeout=60)]
    return any(r.HasField("finished") for r in replies)


# -- rollout ---------------------------------------------------------------------------------


def test_rollout_refuses_a_pickle_only_base_model(folders):
    with pytest.raises(errors.FailedPrecondition) as err:
        Generator(RolloutConfig(base_model=str(folders["pickle_model"]), device="cpu"))
    assert "safetensors" in str(err.value) and "pytorch_model.bin" in str(err.value)


def test_rollout_service_process_exits_with_one_line_for_a_pickle_only_base_model(
    folders, tmp_path
):
    proc = subprocess.run(
        [sys.executable, "-m", "services.rollout", f"base_model={folders['pickle_model']}",
         "device=cpu", f"adapter_cache_dir={tmp_path / 'cache'}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "could not start" in last and "safetensors" in last, proc.stderr


def test_rollout_refuses_a_pickle_adapter_fetched_over_the_network(
    tiny, folders, training, tmp_path
):
    training.blobs[("pickled", 1)] = tar_folder(folders["pickle_adapter"])
    training.blobs[("good", 1)] = tar_folder(folders["st_adapter"])

    async def scenario(stub):
        bad = await load_adapter(stub, "pickled")
        good = await load_adapter(stub, "good")
        return bad, good, await generate_ok(stub, "good"), await generate_ok(stub)

    bad, good, generated_with_good, generated_base = with_rollout(
        tiny, training.address, tmp_path / "cache", scenario
    )
    assert bad[0] == grpc.StatusCode.FAILED_PRECONDITION, bad
    assert "adapter_model.safetensors" in bad[1] and "pickle" in bad[1], bad
    assert good == (grpc.StatusCode.OK, "")
    assert generated_with_good and generated_base


# -- reward ----------------------------------------------------------------------------------


def test_reward_refuses_pickle_only_reward_and_base_models(folders):
    from services.reward.scorers.model import RewardModels

    for key in ("reward_model", "base_model"):
        with pytest.raises(errors.FailedPrecondition) as err:
            RewardModels(**{key: str(folders["pickle_model"])})
        assert "safetensors" in str(err.value) and key in str(err.value), err.value


def test_reward_refuses_a_pickle_reward_adapter(tiny, folders):
    from services.reward.scorers.model import RewardModels

    with pytest.raises(errors.FailedPrecondition) as err:
        RewardModels(base_model=str(tiny), reward_model=str(folders["pickle_rm_adapter"]))
    assert "adapter_model.safetensors is missing" in str(err.value)


# -- training --------------------------------------------------------------------------------


def test_training_refuses_a_pickle_only_base_model(folders, tmp_path):
    from services.training.model.load import load_base
    from services.training.spec import normalize as job_specs
    from services.training.spec.settings import LoraSettings, Settings
    from services.training.spec.validation import validate

    spec = training_pb2.TrainingJobSpec(
        job_id="pickled",
        stage=training_pb2.STAGE_SFT,
        base_model=str(folders["pickle_model"]),
        dataset=training_pb2.DatasetRef(dataset_id="good"),
    )
    # CreateTrainingJob's checks, then the training core's: INVALID_ARGUMENT on spec.base_model
    for check in (lambda s: job_specs.validate(job_specs.normalize(s)), validate):
        with pytest.raises(errors.InvalidArgument) as err:
            check(spec)
        assert [v.field for v in err.value.violations] == ["spec.base_model"], err.value
        description = err.value.violations[0].description
        assert "safetensors" in description and "pytorch_model.bin" in description
    # the loader itself never unpickles, even when called without a validated spec
    settings = Settings(
        recipe="sft", base_model=str(folders["pickle_model"]), method="lora", lora=LoraSettings()
    )
    with pytest.raises(errors.FailedPrecondition, match="safetensors.*pytorch_model.bin"):
        load_base(settings, torch.device("cpu"))
    # a folder with no weights at all passes the name-only checks and is refused by the loader
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_bytes((folders["pickle_model"] / "config.json").read_bytes())
    with pytest.raises(errors.FailedPrecondition, match="no \\*.safetensors"):
        load_base(Settings(recipe="sft", base_model=str(empty), method="full",
                           lora=LoraSettings()), torch.device("cpu"))  # fmt: skip


# -- adapter transfer (item 13) --------------------------------------------------------------


def test_a_flipped_byte_is_rejected_by_the_checksum_and_nothing_is_cached(
    tiny, folders, training, tmp_path
):
    blob = tar_folder(folders["st_adapter"])
    training.blobs[("flipped", 1)] = blob
    training.flip_at = len(blob) // 2  # inside the weights
    cache_dir = tmp_path / "cache"

    async def scenario(stub):
        flipped = await load_adapter(stub, "flipped")
        training.flip_at = None  # the link is good again: the same version now loads
        return flipped, await load_adapter(stub, "flipped")

    flipped, again = with_rollout(tiny, training.address, cache_dir, scenario)
    assert flipped[0] == grpc.StatusCode.UNAVAILABLE and "sha256" in flipped[1], flipped
    assert again == (grpc.StatusCode.OK, "")
    assert hashed_entries(cache_dir) == [hashlib.sha256(blob).hexdigest()]
    assert list((cache_dir / ".tmp").iterdir()) == []


KILLED_FETCH = """
import sys
from llamafleet.common.v1 import common_pb2
from services.common.adapter_cache import AdapterCache
AdapterCache(sys.argv[1], sys.argv[2]).ensure(common_pb2.AdapterRef(id="big", version=1))
"""


def test_a_killed_transfer_leaves_no_file_under_a_hash_and_the_next_fetch_works(
    folders, training, tmp_path
):
    blob = tar_folder(folders["st_adapter"]) + b"\0" * (64 * CHUNK)  # tar allows zero padding
    training.blobs[("big", 1)] = blob
    training.stall_after = 8  # 8 chunks arrive, then the server holds the stream open
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_FETCH, str(cache_dir), training.address],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        assert training.sent.wait(60), "the fetch never started"
        time.sleep(0.3)  # let the client write what it received
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert hashed_entries(cache_dir) == []  # nothing under a hash name, no index entry
    assert list((cache_dir / ".refs").iterdir()) == []
    partial = list((cache_dir / ".tmp").iterdir())
    assert partial, "the killed fetch should have left its partial download in .tmp"
    training.stall_after = None
    got = AdapterCache(cache_dir, training.address).fetch(ref("big"))
    assert got.sha256 == hashlib.sha256(blob).hexdigest()
    assert (got.path / "adapter_model.safetensors").read_bytes() == (
        folders["st_adapter"] / "adapter_model.safetensors"
    ).read_bytes()
