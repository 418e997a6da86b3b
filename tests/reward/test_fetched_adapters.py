"""Reward adapters named in requests are fetched from the training service (FetchAdapter, through
the shared adapter cache) and score exactly like the same folder loaded locally."""

from __future__ import annotations

import hashlib
import io
import tarfile
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from llamafleet.training.v1 import training_pb2, training_service_pb2, training_service_pb2_grpc

from services.common.errors import FailedPrecondition, NotFound
from services.common.full_weights import MANIFEST_FILE, WEIGHTS_FILE
from services.reward.config import RewardConfig
from services.reward.scorers import ScoreInput
from services.reward.scoring import ScoringEngine


def tar_folder(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            data = path.read_bytes()
            info = tarfile.TarInfo(path.name)
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Training(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, blobs: dict[tuple[str, int], bytes]) -> None:
        self.blobs = blobs
        self.fetches = 0

    def FetchAdapter(self, request, context):
        key = (request.adapter.id, request.adapter.version)
        if key not in self.blobs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no adapter {key[0]}@{key[1]}")
        self.fetches += 1
        blob = self.blobs[key][request.offset :]
        info = training_pb2.AdapterBlobInfo(
            adapter=request.adapter, total_size=len(self.blobs[key]),
            sha256=hashlib.sha256(self.blobs[key]).hexdigest(),
            format=training_pb2.ADAPTER_FORMAT_PEFT_TAR, stage=training_pb2.STAGE_RM,
        )  # fmt: skip
        for start in range(0, len(blob), 1 << 20):
            chunk = training_pb2.AdapterChunk(offset=request.offset + start)
            chunk.data = blob[start : start + (1 << 20)]
            if start == 0:
                chunk.info.CopyFrom(info)
            yield training_service_pb2.FetchAdapterResponse(chunk=chunk)


@pytest.fixture
def training(rm_folders, tmp_path):
    policy = tmp_path / "grpo-full-v1"  # a full-weights GRPO policy version (its files' names)
    policy.mkdir()
    (policy / MANIFEST_FILE).write_text("{}")
    (policy / WEIGHTS_FILE).write_bytes(b"\0" * 64)
    servicer = Training(
        {("rm-b", 1): tar_folder(rm_folders.rm_b), ("grpo-full", 1): tar_folder(policy)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.so_reuseport", 0)])
    training_service_pb2_grpc.add_TrainingServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0)


def test_fetched_reward_adapter_scores_like_the_local_folder(rm_folders, training, tmp_path):
    servicer, address = training
    base = RewardConfig(base_model=str(rm_folders.base), max_wait_ms=0.0)
    fetched = ScoringEngine.from_config(
        replace(base, training_address=address, adapter_cache_dir=str(tmp_path / "cache"))
    )
    local = ScoringEngine.from_config(replace(base, adapter_dir=str(rm_folders.adapter_dir)))
    try:
        items = [ScoreInput(prompt_ids=(0, 5, 6), completion_ids=(7, 8, 1))]
        got = fetched.score("reward_model", "", ("rm-b", 1), items).raw
        again = fetched.score("reward_model", "", ("rm-b", 1), items).raw
        expected = local.score("reward_model", "", ("rm-b", 1), items).raw
        assert got == pytest.approx(expected, abs=1e-6) and again == got
        assert servicer.fetches == 1  # resident (and cached) after the first use
        with pytest.raises(NotFound):
            fetched.score("reward_model", "", ("rm-b", 2), items)
        with pytest.raises(FailedPrecondition, match="full-weights GRPO policy version"):
            fetched.score("reward_model", "", ("grpo-full", 1), items)
    finally:
        fetched.close()
        local.close()
