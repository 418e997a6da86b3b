"""FetchAdapter: ~1 MiB chunks of a deterministic tar whose sha256 is announced up front."""

from __future__ import annotations

import hashlib
import io
import tarfile

import grpc
import pytest
from llamafleet.client import RpcError
from llamafleet.common.v1 import common_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from training_harness import TrainingService, config, fake_base_model, kill_runners, make_spec

from services.training.adapters.store import CHUNK_SIZE, AdapterArchive


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    base = fake_base_model(tmp / "base")
    svc = TrainingService(config(tmp / "jobs"))
    svc.training.CreateTrainingJob(
        api.CreateTrainingJobRequest(spec=make_spec(base, "lora-1", steps=4, save_steps=2))
    )
    request = api.WatchTrainingJobRequest(job_id="lora-1")
    list(svc.training.WatchTrainingJob(request, timeout=60))
    yield svc
    svc.stop()
    kill_runners(tmp / "jobs")


def fetch(service, job_id="lora-1", version=0, offset=0) -> list[pb.AdapterChunk]:
    request = api.FetchAdapterRequest(
        adapter=common_pb2.AdapterRef(id=job_id, version=version), offset=offset
    )
    return [r.chunk for r in service.training.FetchAdapter(request)]


def test_latest_version_streams_in_chunks_with_its_sha256(service):
    job = service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="lora-1")).job
    chunks = fetch(service)
    info = chunks[0].info
    assert info.adapter.id == "lora-1" and info.adapter.version == 2  # 0 = the latest
    assert info.format == pb.ADAPTER_FORMAT_PEFT_TAR and info.step == 4
    assert info.stage == pb.STAGE_SFT and info.base_model == job.spec.base_model
    assert all(not c.HasField("info") for c in chunks[1:])
    assert all(0 < len(c.data) <= CHUNK_SIZE for c in chunks) and len(chunks) >= 3
    offsets = [c.offset for c in chunks]
    assert offsets == [sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))]
    blob = b"".join(c.data for c in chunks)
    assert len(blob) == info.total_size
    assert hashlib.sha256(blob).hexdigest() == info.sha256 == job.adapter_versions[-1].sha256

    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        assert tar.getnames() == ["adapter_config.json", "adapter_model.safetensors"]
        assert {m.mtime for m in tar.getmembers()} == {0}
        folder = job.checkpoints[-1].path.replace("checkpoints/step-4", "adapters/v2")
        with open(f"{folder}/adapter_model.safetensors", "rb") as fh:
            assert tar.extractfile("adapter_model.safetensors").read() == fh.read()


def test_the_archive_is_deterministic_and_equals_what_tarfile_writes(service, tmp_path):
    job = service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="lora-1")).job
    folder = job.checkpoints[0].path.replace("checkpoints/step-2", "adapters/v1")
    archive = AdapterArchive(folder)
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in archive.members:
            info = tarfile.TarInfo(member.name)
            info.size, info.mtime, info.mode = member.size, 0, 0o644
            with open(member.path, "rb") as fh:
                tar.addfile(info, fh)
    blob = b"".join(c.data for c in fetch(service, version=1))
    assert blob == expected.getvalue()
    assert hashlib.sha256(blob).hexdigest() == job.adapter_versions[0].sha256


def test_offset_resumes_an_interrupted_download(service):
    full = b"".join(c.data for c in fetch(service))
    for offset in (1, CHUNK_SIZE + 7, len(full) - 3, len(full)):
        chunks = fetch(service, offset=offset)
        assert chunks[0].HasField("info") and chunks[0].offset == offset
        assert b"".join(c.data for c in chunks) == full[offset:]
    with pytest.raises(RpcError) as err:
        fetch(service, offset=len(full) + 1)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_job_or_version_is_not_found(service):
    for job_id, version in (("nope", 0), ("lora-1", 9)):
        with pytest.raises(RpcError) as err:
            fetch(service, job_id, version)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
