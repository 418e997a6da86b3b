"""The seam between the rollout service and its generation engines (``hf``, ``vllm``).

An engine turns token ids into token ids: prompt ids + sampling parameters + the name of a
resident adapter (or None for the base model) -> a stream of events per sequence, each new token
with its log-probability (log-softmax of the raw logits with the adapter applied, temperature 1,
before repetition penalty / top-k / top-p: the quantity the trainer computes). Engines know
nothing about gRPC, Redis, adapter versions or where adapter folders come from; ``adapters.py``
maps ``id@version`` to engine adapter names and ``servicer.py``/``worker.py`` translate protos.

This module is pure Python (no torch, no grpc) so the vLLM engine can import it inside its own
virtualenv. ``make_engine`` imports the chosen engine lazily.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Protocol, runtime_checkable

ENGINES = ("hf", "vllm")


class FinishReason(StrEnum):
    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens reached, or the model's context is full
    ABORT = "abort"  # cancelled


@dataclass(frozen=True)
class Sampling:
    """Validated sampling parameters (``convert.sampling_from_proto`` fills and checks them)."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    n: int = 1
    repetition_penalty: float = 1.0
    top_logprobs: int | None = None  # None: no per-token alternatives; k: the k most likely
    json_schema: str | None = None  # constrained decoding to this JSON Schema (JSON text)
    json_object: bool = False  # constrained decoding to any JSON object

    @property
    def structured(self) -> bool:
        return self.json_schema is not None or self.json_object


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: tuple[int, ...]
    sampling: Sampling = Sampling()
    adapter: str | None = None  # a name given to ``load_adapter``; None = the base model


@dataclass(frozen=True)
class TokenDelta:
    """New tokens of sequence ``index`` (text: newly completed text, stop strings held back)."""

    index: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    text: str = ""
    # with ``Sampling.top_logprobs``: per token, the (id, log-prob) most likely first
    top: tuple[tuple[tuple[int, float], ...], ...] = ()


@dataclass(frozen=True)
class Finished:
    index: int
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


Event = TokenDelta | Finished


@dataclass
class Completion:
    """One whole sequence, gathered from its events."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: FinishReason | None = None
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)


@runtime_checkable
class GenerationEngine(Protocol):
    """What the rollout service needs from an engine. Methods may be called from many threads."""

    name: str  # "hf" or "vllm" (Rollout.engine)
    structured_outputs: bool  # whether it decodes under a JSON Schema (``Sampling.json_schema``)

    def generate(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        """Stream the ``request.sampling.n`` sequences, interleaved, as tokens are produced.

        Every sequence ends with exactly one ``Finished``; setting ``cancel`` ends the remaining
        ones with ``FinishReason.ABORT``.
        """
        ...

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """Generate several requests (possibly for different adapters) to completion."""
        ...

    def load_adapter(self, name: str, path: Path) -> None:
        """Make the PEFT folder at ``path`` available as ``name``; other requests keep running."""
        ...

    def load_weights(self, name: str, path: Path) -> None:
        """Make the full-weights version folder at ``path`` (``common.full_weights``) available
        as ``name``, beside the base model; unloaded with ``unload_adapter``. An engine that
        cannot raises ``NotImplementedError`` saying why."""
        ...

    def unload_adapter(self, name: str) -> None: ...

    def tokenize(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text with special tokens skipped."""
        ...

    def close(self) -> None: ...


def collect(events: Iterable[Event], n: int) -> list[Completion]:
    """Gather a ``generate`` stream into ``n`` completions."""
    out = [Completion() for _ in range(n)]
    for event in events:
        seq = out[event.index]
        if isinstance(event, TokenDelta):
            seq.token_ids.extend(event.token_ids)
            seq.logprobs.extend(event.logprobs)
            seq.top.extend(event.top)
            seq.text += event.text
        else:
            seq.finish_reason = event.reason
    return out


class TextTracker:
    """Incremental detokenization of one sequence, with stop strings.

    ``update(all_ids)`` returns the text newly made complete and whether a stop string appeared.
    Text is held back while it ends in an incomplete UTF-8 sequence or in a prefix of a stop
    string, so the streamed text never contains (part of) a stop string.
    """

    def __init__(self, decode, stop: Sequence[str] = ()) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._sent = 0  # characters of the decoded text already returned
        self.text = ""  # final text (stop string excluded)

    def update(self, token_ids: Sequence[int]) -> tuple[str, bool]:
        full = self._decode(token_ids)
        for stop in self._stop:
            at = full.find(stop, max(0, self._sent - len(stop)))
            if at != -1:
                full = full[:at]
                new, self._sent = full[self._sent :], max(self._sent, len(full))
                self.text = full
                return new, True
        safe = len(full)
        if full.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its rest
            safe = len(full.rstrip("\ufffd"))
        for stop in self._stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if full[:safe].endswith(stop[:k]):
                    safe = min(safe, len(full[:safe]) - k)
                    break
        safe = max(safe, self._sent)
        new = full[self._sent : safe]
        self._sent = safe
        self.text = full
        return new, False

    def flush(self) -> str:
        """The held-back rest at the end of a sequence that did not stop on a stop string."""
        new = self.text[self._sent :]
        self._sent = len(self.text)
        return new


def make_engine(
    kind: str,
    base_model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    max_resident_adapters: int = 4,
    max_lora_rank: int = 64,
    memory_fraction: float = 0.9,
) -> GenerationEngine:
    """Build the engine named ``kind`` over the model folder ``base_model`` (lazy imports)."""
    if kind == "hf":
        from services.rollout.engines.hf import HFEngine

        return HFEngine(base_model, device=device, dtype=dtype)
    if kind == "vllm":
        from services.rollout.engines.vllm import VLLMEngine

        return VLLMEngine(
            base_model,
            device=device,
            dtype=dtype,
            max_loras=max_resident_adapters,
            max_lora_rank=max_lora_rank,
            gpu_memory_utilization=memory_fraction,
        )
    raise ValueError(f"unknown engine {kind!r}; choose one of: {', '.join(ENGINES)}")
