"""Weight sync of full-weights GRPO policy versions, training service -> rollout engine.

The real training service (jobs run by ``fake_runner``, which publishes a full-weights folder made
here by ``model.full_weights`` as every version) streams versions with ``FetchAdapter``; the
rollout side is the real ``AdapterCache`` (sha256-verified, content-addressed) under the real
``ResidentAdapters`` over the real ``HFEngine``. Checked:

- the stream announces ``ADAPTER_FORMAT_FULL_SAFETENSORS`` and the job lists its versions;
- a chunk corrupted in flight is refused (sha256 mismatch) and nothing is cached or loaded;
- many tasks naming the same version fetch it once (counted on the wire), a new version once more;
- the engine generates with the version's weights: greedy tokens equal, and log-probs within
  1e-5 of, a transformers model with those tensors loaded; base requests still get the base;
  a freeze version (a subset of tensors) is the base with that subset replaced;
- at most ``max_full`` versions stay resident (LRU, a model each);
- the vllm engine refuses a full-weights version with FAILED_PRECONDITION and its reason.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from llamafleet.common.v1 import common_pb2
from llamafleet.redis_local import LocalRedis, free_port
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from safetensors.torch import load_file
from training_harness import TrainingService, config, fake_launcher, kill_runners, make_spec
from transformers import AutoModelForCausalLM

from services.common.adapter_cache import AdapterCache
from services.common.errors import FailedPrecondition, Unavailable
from services.common.full_weights import WEIGHTS_FILE
from services.rollout.adapters import ResidentAdapters
from services.rollout.engines import GenerationRequest, Sampling, collect
from services.rollout.engines.hf import HFEngine
from services.training.adapters import store
from services.training.model.full_weights import publish_full_weights

PROMPT = (5, 17, 42, 9, 100, 7)


def perturbed(base, seed: int, method: str = "full"):
    """The base with noise on every weight (full) or on the last layer only (freeze, the rest
    marked frozen as ``methods.freeze`` does)."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    last = f"layers.{model.config.num_hidden_layers - 1}."
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            trained = method == "full" or last in name
            p.requires_grad_(trained)
            if trained:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


class CountingCache(AdapterCache):
    """Counts the archives streamed over the network (not the cache hits)."""

    streams: list[str]

    def _stream_to(self, tmp, ref, address):
        self.streams = getattr(self, "streams", [])
        self.streams.append(f"{ref.id}@{ref.version}")
        return super()._stream_to(tmp, ref, address)


@pytest.fixture(scope="module")
def versions(tiny_random, tmp_path_factory):
    root = tmp_path_factory.mktemp("full-versions")
    out = {}
    for key, seed, method in (("v1", 1, "full"), ("v2", 2, "full"), ("f1", 3, "freeze")):
        out[key] = root / key
        publish_full_weights(perturbed(tiny_random, seed, method), out[key], method)
    return out


@pytest.fixture(scope="module")
def service(tiny_random, versions, tmp_path_factory):
    """GRPO jobs ``full-a`` (versions 1 and 2: the fake runner publishes its one source folder,
    ``v1``, as every version), ``full-b`` (``v2``) and ``freeze-c`` (``f1``)."""
    tmp = tmp_path_factory.mktemp("sync")
    sources = {"full-a": versions["v1"], "full-b": versions["v2"], "freeze-c": versions["f1"]}

    def launcher(spec, job_dir, data_address, token):
        argv, env = fake_launcher(spec, job_dir, data_address, token)
        return argv, {**env, "FAKE_ADAPTER_SRC": str(sources[spec.job_id])}

    redis = LocalRedis(tmp / "redis", free_port()).start()  # GRPO jobs need one configured
    svc = TrainingService(config(tmp / "jobs", redis_url=redis.url), launcher=launcher)
    for job_id, kind in (("full-a", "FULL"), ("full-b", "FULL"), ("freeze-c", "FREEZE")):
        spec = make_spec(tiny_random, job_id, steps=2, save_steps=1)
        spec.stage = pb.STAGE_GRPO
        spec.ppo.reward_scorer = "functions"
        spec.ppo.sampling.n = 2
        spec.finetuning.type = getattr(pb, f"FINETUNING_TYPE_{kind}")
        svc.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec))
        list(svc.training.WatchTrainingJob(api.WatchTrainingJobRequest(job_id=job_id), timeout=60))
    yield svc
    svc.stop()
    kill_runners(tmp / "jobs")
    redis.stop()


def ref(job: str, version: int) -> common_pb2.AdapterRef:
    return common_pb2.AdapterRef(id=job, version=version)


def greedy(engine: HFEngine, name: str | None, max_tokens: int = 12):
    request = GenerationRequest(PROMPT, Sampling(temperature=0.0, max_tokens=max_tokens), name)
    return collect(engine.generate(request), 1)[0]


def reference_run(model, max_tokens: int = 12):
    """Greedy tokens and their log-probs from a plain transformers forward (no cache)."""
    ids = list(PROMPT)
    tokens, logprobs = [], []
    model.eval()
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            token = int(lp.argmax())
            tokens.append(token)
            logprobs.append(float(lp[token]))
            ids.append(token)
    return tokens, logprobs


def with_version(base, folder):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    result = model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
    assert not result.unexpected_keys
    return model


def test_versions_stream_as_full_safetensors_and_are_listed(service):
    job = service.training.GetTrainingJob(api.GetTrainingJobRequest(job_id="full-a")).job
    assert job.adapter_id == "full-a" and [v.version for v in job.adapter_versions] == [1, 2]
    request = api.FetchAdapterRequest(adapter=ref("full-a", 1))
    chunks = [r.chunk for r in service.training.FetchAdapter(request)]
    assert chunks[0].info.format == pb.ADAPTER_FORMAT_FULL_SAFETENSORS
    assert chunks[0].info.sha256 == job.adapter_versions[0].sha256


def test_a_corrupted_chunk_is_refused_and_nothing_is_kept(
    service, tiny_random, tmp_path, monkeypatch
):
    original = store.AdapterArchive.chunks

    def corrupted(self, offset=0, size=store.CHUNK_SIZE):
        for k, (at, data) in enumerate(original(self, offset, size)):
            if k == 1:  # the second chunk: inside policy.safetensors
                data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
            yield at, data

    monkeypatch.setattr(store.AdapterArchive, "chunks", corrupted)
    engine = HFEngine(tiny_random, device="cpu", dtype="float32")
    cache = CountingCache(tmp_path / "cache", service.host.address)
    adapters = ResidentAdapters(engine, cache, max_resident=4)
    with pytest.raises(Unavailable, match="sha256") as info:
        adapters.acquire(ref("full-a", 1))
    assert info.value.reason == "ADAPTER_CHECKSUM_MISMATCH"
    assert cache.lookup(ref("full-a", 1)) is None and engine.adapters() == set()
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")]
    monkeypatch.setattr(store.AdapterArchive, "chunks", original)
    assert adapters.acquire(ref("full-a", 1)) is not None  # the intact stream loads
    assert cache.streams == ["full-a@1", "full-a@1"]


def test_fetched_once_per_version_and_served_as_transformers_computes(
    service, tiny_random, versions, tmp_path
):
    engine = HFEngine(tiny_random, device="cpu", dtype="float32")
    cache = CountingCache(tmp_path / "cache", service.host.address)
    adapters = ResidentAdapters(engine, cache, max_resident=4, max_full=2)
    names = set()
    for _task in range(20):  # twenty tasks on full-a@1, then twenty on @2
        for version in (1, 2):
            names.add(adapters.acquire(ref("full-a", version)))
            adapters.release(ref("full-a", version))
    assert cache.streams == ["full-a@1", "full-a@2"]  # once per version, however many tasks
    assert len(names) == 2

    name = adapters.acquire(ref("full-a", 2))
    try:
        got = greedy(engine, name)
        base = greedy(engine, None)
    finally:
        adapters.release(ref("full-a", 2))
    tokens, logprobs = reference_run(with_version(tiny_random, versions["v1"]))
    assert got.token_ids == tokens
    torch.testing.assert_close(
        torch.tensor(got.logprobs), torch.tensor(logprobs), rtol=0, atol=1e-5
    )
    base_tokens, base_logprobs = reference_run(AutoModelForCausalLM.from_pretrained(tiny_random))
    assert base.token_ids == base_tokens and base_logprobs != logprobs  # the base is untouched
    torch.testing.assert_close(
        torch.tensor(base.logprobs), torch.tensor(base_logprobs), rtol=0, atol=1e-5
    )

    # a freeze version: the base with its trained layer replaced
    name = adapters.acquire(ref("freeze-c", 1))
    got = greedy(engine, name)
    adapters.release(ref("freeze-c", 1))
    tokens, logprobs = reference_run(with_version(tiny_random, versions["f1"]))
    assert got.token_ids == tokens
    torch.testing.assert_close(
        torch.tensor(got.logprobs), torch.tensor(logprobs), rtol=0, atol=1e-5
    )

    # max_full = 2: a third version evicts the least recently used idle one
    adapters.acquire(ref("full-b", 1))
    adapters.release(ref("full-b", 1))
    resident = [f"{r.ref.id}@{r.ref.version}" for r in adapters.resident() if r.full]
    assert resident == ["full-b@1", "freeze-c@1"] and len(engine.adapters()) == 2


def test_the_vllm_engine_refuses_full_weights_with_its_reason(versions, tmp_path):
    from services.rollout.engines.vllm import FULL_WEIGHTS_REFUSAL, VLLMEngine

    class VllmLike:  # the refusal needs no running vLLM: load_weights refuses before touching it
        name = "vllm"
        load_weights = VLLMEngine.load_weights

    class LocalSource:
        def fetch(self, r):
            folder = tmp_path / "v1"
            shutil.copytree(versions["v1"], folder, dirs_exist_ok=True)
            from services.common.adapter_cache import CachedAdapter

            return CachedAdapter(r, folder, "0" * 64, 1)

    adapters = ResidentAdapters(VllmLike(), LocalSource(), max_resident=2)
    with pytest.raises(FailedPrecondition) as info:
        adapters.acquire(ref("full-a", 1))
    assert info.value.reason == "FULL_WEIGHTS_UNSUPPORTED"
    assert FULL_WEIGHTS_REFUSAL in str(info.value) and "engine vllm" in str(info.value)
