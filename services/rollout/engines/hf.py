"""The ``hf`` engine: a transformers causal LM with PEFT LoRA adapters, decoded step by step.

The decoding loop is written out (one forward with the KV cache per step) instead of calling
``model.generate`` so that each token is streamed as soon as it is chosen, its log-probability is
taken from the raw logits (``log_softmax`` at temperature 1, before any sampling transform), and
requests for different adapters interleave: each forward step holds the model lock only for the
step and activates its own adapter first. Loading an adapter takes the same lock for the load
alone, so a new version becomes usable without pausing requests on older ones for longer than a
step.

Sampling follows transformers' order: repetition penalty, temperature, top-k, top-p, then a draw
from ``torch.multinomial`` with a per-request ``torch.Generator`` (a seed gives reproducible
samples); temperature 0 is greedy (argmax), matching ``generate(do_sample=False)``.

``generate_batch`` is the throughput path (the queue worker's): static batches of many sequences
(left padded, one KV-cached forward per step for all of them, finished requests dropped from the
cache), grouped by adapter because a PEFT forward runs one active adapter. transformers'
``generate`` is not used for it because it samples every row with one generator and one set of
sampling parameters, and a request in a batch must get exactly what it gets alone.

**Slot reuse** (``replace_adapter(old, name, folder)``): a new version whose PEFT config equals
the loaded adapter ``old``'s is copied into ``old``'s LoRA parameters in place (names and shapes
checked first) and ``old``'s slot is renamed to it, instead of injecting a new PEFT adapter into
every target module and deleting the old one (~0.2 s against ~0.01 s on the ``small`` model).
A slot keeps the PEFT adapter name it was created with; ``_slots`` maps loaded names to slots.

**Full-weights versions** (a GRPO job that fine-tunes all weights, or a freeze subset):
``load_weights(name, folder)`` builds a policy model of its own for that version (the base model
loaded again, then the version's tensors copied over it, checked against the manifest: names,
shapes, and every parameter present for a complete version), so a request naming it generates
with those weights while base and LoRA requests keep using the base model. Each resident version
costs one model's memory; ``adapters.ResidentAdapters`` bounds how many stay resident
(``max_resident_full_versions``) and unloads the least recently used idle one.

What it does not know: adapter versions, fetching, gRPC. ``name`` strings come from
``adapters.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from services.common.errors import FailedPrecondition
from services.common.full_weights import WEIGHTS_FILE, read_manifest
from services.rollout.engines import (
    Completion,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    Sampling,
    TextTracker,
    TokenDelta,
)

logger = logging.getLogger(__name__)

_ADAPTER_WEIGHTS = "adapter_model.safetensors"
# adapter config fields that do not change what a slot computes
_CONFIG_IGNORED = ("base_model_name_or_path", "revision", "inference_mode")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype in ("", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def sample_next(
    logits: torch.Tensor,  # (B, V) raw logits
    generated: torch.Tensor,  # (B, T) prompt + generated ids, for the repetition penalty
    sampling: Sampling,
    generator: torch.Generator | None,
) -> torch.Tensor:  # (B,)
    """One token per row, transformed as transformers' logits processors do."""
    scores = logits.float()
    if sampling.repetition_penalty != 1.0:
        seen = torch.gather(scores, 1, generated)  # (B, T)
        seen = torch.where(
            seen < 0, seen * sampling.repetition_penalty, seen / sampling.repetition_penalty
        )
        scores = scores.scatter(1, generated, seen)
    if sampling.temperature == 0:
        return scores.argmax(dim=-1)
    scores = scores / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False, dim=-1)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - sampling.top_p)
        remove[:, -1] = False  # always keep the most likely token
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    probs = scores.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def adapter_config_key(path: Path) -> str:
    """The adapter's PEFT config at ``path`` as a canonical string, without the fields that do
    not change what its layers compute: two adapters with equal keys fit the same slot."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(path)).to_dict()
    for field in _CONFIG_IGNORED:
        config.pop(field, None)
    return json.dumps(config, sort_keys=True, default=_canonical)


def _canonical(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return repr(value)


def _tensor_mismatch(tensors: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> str:
    """Why ``tensors`` cannot be copied into ``targets`` ('' when they can: same names, shapes)."""
    if not targets:
        return "the slot exposes no tensors to copy into"
    if set(tensors) != set(targets):
        diff = sorted(set(tensors) ^ set(targets))
        return f"tensor names differ, e.g. {diff[0]}"
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(targets[key].shape):
            return f"{key} has shape {tuple(tensor.shape)}, the slot {tuple(targets[key].shape)}"
    return ""


class HFEngine:
    """transformers + PEFT; one model, many LoRA adapters, requests interleaved per step."""

    name = "hf"
    structured_outputs = False  # no constrained decoding here: JSON Schema output is vllm's

    def __init__(
        self,
        base_model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_rows: int = 64,
    ):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        self.max_batch_rows = max_batch_rows  # sequences per forward in generate_batch
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.base_model = Path(base_model)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model))
        self.model = self._load_base()
        self._peft = None  # the PeftModel once the first adapter is loaded
        # loaded LoRA adapters: name -> its slot (the PEFT adapter holding its weights; a slot
        # outlives an adapter when ``replace_adapter`` loads the next one into it)
        self._slots: dict[str, str] = {}
        self._slot_configs: dict[str, str] = {}  # slot -> its adapter config (adapter_config_key)
        self._slot_tensor_cache: dict[str, dict[str, torch.Tensor]] = {}  # see _slot_tensors
        self._full: dict[str, torch.nn.Module] = {}  # full-weights versions: name -> own model
        self._lock = threading.Lock()
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.max_positions = int(getattr(self.model.config, "max_position_embeddings", 0) or 0)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else min(self.eos_ids, default=0))
        logger.info(
            "hf engine: %s on %s (%s), eos ids %s",
            base_model,
            self.device,
            self.dtype,
            sorted(self.eos_ids),
        )

    def _load_base(self) -> torch.nn.Module:
        model = AutoModelForCausalLM.from_pretrained(
            str(self.base_model), dtype=self.dtype, use_safetensors=True
        )
        return model.to(self.device).eval()

    # --- adapters ---------------------------------------------------------------------------

    def load_weights(self, name: str, path: Path) -> None:
        """Make the full-weights version at ``path`` available as ``name``: a copy of the base
        model with the version's tensors (cast to this engine's dtype) in place of its own.
        FAILED_PRECONDITION when the tensors do not fit this base (unknown names, other shapes,
        parameters missing from a complete version)."""
        what = f"full-weights version {name} ({path})"
        manifest = read_manifest(path, what)
        model = self._load_base()
        params = dict(model.named_parameters())
        unknown = sorted(set(manifest.tensors) - set(params))
        if unknown:
            raise FailedPrecondition(
                f"{what} has tensors this engine's base {self.base_model} lacks: "
                f"{', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}; the job trained "
                "another base",
                reason="FULL_WEIGHTS_BASE_MISMATCH",
            )
        missing = sorted(set(params) - set(manifest.tensors)) if manifest.complete else []
        if missing:
            raise FailedPrecondition(
                f"{what} is a complete ({manifest.method}) version but lacks {len(missing)} of "
                f"the base's parameters, e.g. {missing[0]}",
                reason="FULL_WEIGHTS_BASE_MISMATCH",
            )
        with safe_open(str(Path(path) / WEIGHTS_FILE), framework="pt") as f, torch.no_grad():
            if set(f.keys()) != set(manifest.tensors):
                raise FailedPrecondition(
                    f"{what}: the weights file's tensors are not the manifest's",
                    reason="FULL_WEIGHTS_MANIFEST",
                )
            for tensor_name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensor = f.get_tensor(tensor_name)
                param = params[tensor_name]
                if tuple(tensor.shape) != tuple(param.shape):
                    raise FailedPrecondition(
                        f"{what}: {tensor_name} has shape {tuple(tensor.shape)}, this base's "
                        f"{tuple(param.shape)}",
                        reason="FULL_WEIGHTS_BASE_MISMATCH",
                    )
                param.copy_(tensor)  # to the engine's device and dtype
        with self._lock:
            self._full[name] = model

    def load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        config = adapter_config_key(path)
        with self._lock:
            slot = self._new_slot(name)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(self.model, str(path), adapter_name=slot)
                self._peft.eval()
            else:
                was_off = self._layers_off()
                self._peft.load_adapter(str(path), adapter_name=slot)
                if was_off:  # layers it added start enabled: keep them all off
                    self._peft.base_model.disable_adapter_layers()
            self._slots[name] = slot
            self._slot_configs[slot] = config

    def replace_adapter(self, old: str, name: str, path: Path) -> bool:
        """Load the LoRA adapter at ``path`` as ``name`` into the slot of the loaded adapter
        ``old`` (which stops being loaded): its tensors are copied in place into ``old``'s LoRA
        parameters, so nothing is injected into the model or deleted from it. Only when the
        adapter configs are equal (rank, alpha, target modules, dropout, DoRA, rsLoRA, patterns:
        every field but the base's name) and the file's tensors are exactly the slot's (names and
        shapes); otherwise nothing changes and False is returned (the caller loads it the usual
        way: the same result, slower). The caller guarantees no request is using ``old``."""
        from safetensors.torch import load_file

        slot = self._slots.get(old)
        if slot is None or self._peft is None:
            return False
        config = adapter_config_key(path)
        if config != self._slot_configs.get(slot):
            logger.debug("adapter %s: config differs from slot %s's, full load", name, slot)
            return False
        weights = Path(path) / _ADAPTER_WEIGHTS
        if not weights.is_file():
            return False
        tensors = load_file(str(weights))  # outside the lock: reading the file is the slow part
        with self._lock:
            if self._slots.get(old) != slot:
                return False
            targets = self._slot_tensors(slot)
            mismatch = _tensor_mismatch(tensors, targets)
            if mismatch:
                logger.debug(
                    "adapter %s does not fit slot %s (%s), full load", name, slot, mismatch
                )
                return False
            with torch.no_grad():
                for key, tensor in tensors.items():
                    targets[key].copy_(tensor)  # to the slot's device and dtype, as a load does
            del self._slots[old]
            self._slots[name] = slot
        return True

    def _new_slot(self, name: str) -> str:
        """A PEFT adapter name for a new slot: ``name`` unless a slot already has it (a slot
        keeps the name of the adapter first loaded into it)."""
        slot, k = name, 1
        while slot in self._slot_configs:
            slot, k = f"{name}~{k}", k + 1
        return slot

    def _slot_tensors(self, slot: str) -> dict[str, torch.Tensor]:
        """The slot's tensors under the names PEFT saves them with, each one sharing storage
        with the model's parameter (an in-place copy into it changes the model). Computed once
        per slot (walking the model is most of a reuse's cost otherwise): loading or deleting
        other adapters adds and removes their own parameters and never replaces a slot's."""
        from peft import get_peft_model_state_dict

        if slot in self._slot_tensor_cache:
            return self._slot_tensor_cache[slot]
        state = get_peft_model_state_dict(
            self._peft, adapter_name=slot, save_embedding_layers=False
        )
        params = {p.data_ptr() for p in self._peft.parameters()}
        if any(t.data_ptr() not in params for t in state.values()):
            state = {}  # a copy, not the parameters themselves: nothing to copy into
        self._slot_tensor_cache[slot] = state
        return state

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            if self._full.pop(name, None) is not None:
                return
            slot = self._slots.pop(name, None)
            if slot is None:
                return
            if self._slots and self._peft is not None:  # PEFT needs one adapter left
                if slot in self._peft.active_adapters:
                    self._peft.set_adapter(next(iter(self._slots.values())))
                self._peft.delete_adapter(slot)
                self._slot_configs.pop(slot, None)
                self._slot_tensor_cache.pop(slot, None)

    def _layers_off(self) -> bool:
        """Whether the LoRA layers are disabled (peft toggles them all together)."""
        for module in self._peft.modules():
            if hasattr(module, "disable_adapters") and hasattr(module, "lora_A"):
                return bool(module.disable_adapters)
        return False

    def adapters(self) -> set[str]:
        """Names loaded: LoRA adapters and full-weights versions."""
        return set(self._slots) | set(self._full)

    @contextlib.contextmanager
    def _activated(self, adapter: str | None) -> Iterator[torch.nn.Module]:
        if adapter is not None and adapter in self._full:
            yield self._full[adapter]
        elif self._peft is None:
            if adapter is not None:
                raise KeyError(f"adapter {adapter!r} is not loaded")
            yield self.model
        elif adapter is None:
            # The LoRA layers stay off until an adapter's request comes: toggling them around
            # every decoding step (``disable_adapter()``) walks every module each time, which made
            # base-model steps several times slower once a few adapters were resident.
            if not self._layers_off():
                self._peft.base_model.disable_adapter_layers()
            yield self._peft
        else:
            slot = self._slots.get(adapter)
            if slot is None:
                raise KeyError(f"adapter {adapter!r} is not loaded")
            if self._layers_off():
                self._peft.base_model.enable_adapter_layers()
            if self._peft.active_adapters != [slot]:
                self._peft.set_adapter(slot)
            yield self._peft

    def _forward(self, adapter: str | None, input_ids: torch.Tensor, past):
        with self._lock, torch.inference_mode(), self._activated(adapter) as model:
            out = model(input_ids=input_ids, cache=past, use_cache=True)
        return out.logits[:, -1, :], out.cache

    # --- generation ---------------------------------------------------------------------------

    def generate(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        s = request.sampling
        prompt = list(request.prompt_ids)
        n = s.n
        stop_ids = self.eos_ids | set(s.stop_token_ids)
        generator = None
        if s.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(s.seed)
        ids = torch.tensor([prompt] * n, dtype=torch.long, device=self.device)  # (n, P)
        trackers = [TextTracker(self.decode, s.stop) for _ in range(n)]
        completions: list[list[int]] = [[] for _ in range(n)]
        live = list(range(n))
        step_input, past = ids, None
        limit = s.max_tokens
        if self.max_positions:
            limit = min(limit, self.max_positions - len(prompt))
        for _step in range(max(limit, 0)):
            if cancel is not None and cancel.is_set():
                break
            logits, past = self._forward(request.adapter, step_input, past)  # (n, V)
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            next_ids = sample_next(logits, ids, s, generator)  # (n,)
            chosen = logprobs.gather(1, next_ids[:, None]).squeeze(1)  # (n,)
            top = _top(logprobs, s.top_logprobs)
            ids = torch.cat([ids, next_ids[:, None]], dim=1)
            step_input = next_ids[:, None]
            still = []
            for i in live:
                token, lp = int(next_ids[i]), float(chosen[i])
                completions[i].append(token)
                text, hit_stop = trackers[i].update(completions[i])
                yield TokenDelta(i, (token,), (lp,), text, tuple(top[i : i + 1]))
                if hit_stop or token in stop_ids:
                    yield from self._flush(i, trackers[i], hit_stop)
                    yield Finished(i, FinishReason.STOP, len(prompt), len(completions[i]))
                else:
                    still.append(i)
            live = still
            if not live:
                return
        reason = FinishReason.ABORT if cancel is not None and cancel.is_set() else None
        for i in live:
            yield from self._flush(i, trackers[i])
            yield Finished(i, reason or FinishReason.LENGTH, len(prompt), len(completions[i]))

    @staticmethod
    def _flush(i: int, tracker: TextTracker, stopped: bool = False) -> Iterator[Event]:
        rest = "" if stopped else tracker.flush()
        if rest:
            yield TokenDelta(i, (), (), rest)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Many requests at once: static batches of up to ``max_batch_rows`` sequences.

        Requests are grouped by adapter (PEFT activates one adapter per forward), each request's
        ``n`` samples are ``n`` rows of the batch, and prompts of different lengths are left
        padded (attention mask + explicit position ids, so padding changes nothing a row sees).
        One forward per step serves the whole batch with its KV cache; a request whose rows are
        all finished leaves the batch (its cache rows are dropped). Sampling is per request with
        its own generator, in the order a lone ``generate`` uses, so a seeded or greedy request
        gets the ids it gets alone and log-probs equal up to float rounding.
        """
        for r in requests:
            if r.adapter is not None and r.adapter not in self._slots.keys() | self._full.keys():
                raise KeyError(f"adapter {r.adapter!r} is not loaded")
        out: list[list[Completion]] = [[] for _ in requests]
        groups: dict[str | None, list[int]] = {}
        for k, r in enumerate(requests):
            groups.setdefault(r.adapter, []).append(k)
        for adapter, members in groups.items():
            chunk: list[int] = []
            rows = 0
            for k in members:
                n = requests[k].sampling.n
                if chunk and rows + n > self.max_batch_rows:
                    self._run_batch(adapter, [requests[j] for j in chunk], out, chunk)
                    chunk, rows = [], 0
                chunk.append(k)
                rows += n
            if chunk:
                self._run_batch(adapter, [requests[j] for j in chunk], out, chunk)
        return out

    def _run_batch(
        self,
        adapter: str | None,
        requests: list[GenerationRequest],
        out: list[list[Completion]],
        slots: list[int],
    ) -> None:
        """One static batch (all ``requests`` on ``adapter``), results into ``out[slots[i]]``."""
        states = [_BatchState(r, self) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.pad_id
        rows_ids, rows_mask = [], []
        for r in requests:
            p = list(r.prompt_ids)
            for _ in range(r.sampling.n):
                rows_ids.append([pad] * (width - len(p)) + p)
                rows_mask.append([0] * (width - len(p)) + [1] * len(p))
        step_input = torch.tensor(rows_ids, dtype=torch.long, device=self.device)  # (B, W)
        mask = torch.tensor(rows_mask, dtype=torch.long, device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        live = list(range(len(states)))  # indices into states, in batch row order
        past = None
        while live:
            with self._lock, torch.inference_mode(), self._activated(adapter) as model:
                result = model(
                    input_ids=step_input,
                    attention_mask=mask,
                    position_ids=positions,
                    cache=past,
                    use_cache=True,
                    logits_to_keep=1,
                )
            logits, past = result.logits[:, -1, :], result.cache
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            row = 0
            next_ids = []
            keep_rows: list[int] = []
            still = []
            for si in live:
                st = states[si]
                n = st.n
                picked = st.step(logits[row : row + n], logprobs[row : row + n])
                next_ids.append(picked)
                if not st.finished:
                    still.append(si)
                    keep_rows.extend(range(row, row + n))
                row += n
            tokens = torch.cat(next_ids)  # (B,)
            if len(still) != len(live):
                if not still:
                    break
                index = torch.tensor(keep_rows, dtype=torch.long, device=self.device)
                past.batch_select_indices(index)
                tokens, mask, positions = tokens[index], mask[index], positions[index]
                live = still
            step_input = tokens[:, None]
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            positions = positions[:, -1:] + 1
        for st, slot in zip(states, slots, strict=True):
            out[slot] = st.completions()

    # --- text ---------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def close(self) -> None:
        self._peft = None
        self._slots.clear()
        self._slot_configs.clear()
        self._slot_tensor_cache.clear()
        self._full.clear()


def _top(logprobs: torch.Tensor, k: int | None) -> list[tuple[tuple[int, float], ...]]:
    """Per row, the ``k`` most likely (id, log-prob), most likely first; [] when not asked."""
    if k is None:
        return []
    if k == 0:
        return [()] * logprobs.shape[0]
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return [
        tuple(zip(row_ids, row_values, strict=True))
        for row_ids, row_values in zip(ids.tolist(), values.tolist(), strict=True)
    ]


class _BatchState:
    """One request inside a static batch: its rows, generator, stop rules and results."""

    def __init__(self, request: GenerationRequest, engine: HFEngine) -> None:
        s = request.sampling
        self.sampling = s
        self.n = s.n
        self.prompt_len = len(request.prompt_ids)
        self.stop_ids = engine.eos_ids | set(s.stop_token_ids)
        self.generator = None
        if s.seed is not None:
            self.generator = torch.Generator(device=engine.device).manual_seed(s.seed)
        self.ids = torch.tensor(
            [list(request.prompt_ids)] * s.n, dtype=torch.long, device=engine.device
        )
        self.limit = s.max_tokens
        if engine.max_positions:
            self.limit = min(self.limit, engine.max_positions - self.prompt_len)
        self.limit = max(self.limit, 0)
        # text exactly as a lone generate streams it (incremental, stop strings held back)
        self.trackers = [TextTracker(engine.decode, s.stop) for _ in range(s.n)]
        self.out = [Completion() for _ in range(s.n)]
        self.steps = 0
        self.finished = self.limit == 0
        if self.finished:
            for c in self.out:
                c.finish_reason = FinishReason.LENGTH

    def step(self, logits: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Sample this request's rows (all n, as ``generate`` does) and record the live ones."""
        if self.finished:  # a request with no room at all: its rows only ride along once
            return logits.argmax(dim=-1)
        next_ids = sample_next(logits, self.ids, self.sampling, self.generator)
        chosen = logprobs.gather(1, next_ids[:, None]).squeeze(1).tolist()
        top = _top(logprobs, self.sampling.top_logprobs)  # per row, as ``generate`` gives them
        self.ids = torch.cat([self.ids, next_ids[:, None]], dim=1)
        self.steps += 1
        for i, (token, lp) in enumerate(zip(next_ids.tolist(), chosen, strict=True)):
            c = self.out[i]
            if c.finish_reason is not None:
                continue
            c.token_ids.append(token)
            c.logprobs.append(lp)
            if top:
                c.top.append(top[i])
            text, hit_stop = self.trackers[i].update(c.token_ids)
            c.text += text
            if hit_stop or token in self.stop_ids:
                if not hit_stop:
                    c.text += self.trackers[i].flush()
                c.finish_reason = FinishReason.STOP
        if self.steps >= self.limit:
            for i, c in enumerate(self.out):
                if c.finish_reason is None:
                    c.text += self.trackers[i].flush()
                    c.finish_reason = FinishReason.LENGTH
        self.finished = all(c.finish_reason is not None for c in self.out)
        return next_ids

    def completions(self) -> list[Completion]:
        return self.out


def _eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif eos:
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
