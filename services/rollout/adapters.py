"""Adapter versions resident in the engine: ``id@version`` -> engine adapter name, LRU-evicted.

``ResidentAdapters.acquire(ref)`` returns the engine name to generate with (None for the base
model), first fetching the version through the shared ``AdapterCache`` (sha256-verified, on disk)
and loading it into the engine when it is not resident. Every acquire is paired with a
``release``; an adapter in use is never evicted, so a request on ``v1`` keeps its weights while
``v2`` loads beside it. Beyond ``max_resident`` versions the least recently used idle one is
unloaded, never the most recently used one (so the limit may be exceeded while the others are in
use, and is restored when they are released).

When a new version is about to evict an idle LoRA version, the engine may load it into that
version's slot instead (``replace_adapter`` on the hf engine: the tensors copied in place into the
evicted version's LoRA parameters, when both adapter configs are equal); the versions resident
are the same, only the load is cheaper.

Fetching happens outside every lock shared by other versions (one lock per version dedupes
concurrent loads of the same one), and the engine's own lock is held for the load alone.

A fetched folder is either a PEFT adapter or a full-weights policy version (a GRPO job that
trains all weights or a freeze subset: ``common.full_weights``), which the engine loads with
``load_weights`` as a model of its own. Those cost a whole model each, so they have their own
bound, ``max_full``: a GRPO job with ``max_staleness`` k has tasks on at most k + 1 versions in
flight at once (default 2 for k = 1), and older ones are evicted as above. An engine that does not
load full weights (vllm) refuses such a version with FAILED_PRECONDITION (reason
``FULL_WEIGHTS_UNSUPPORTED``); the queue worker dead-letters the task with that reason, and the
trainer fails the job with it.

A LoRA adapter trained on another base model than the one served (by base name,
``services.common.weight_files.require_trained_base``) is refused with FAILED_PRECONDITION
(reason ``ADAPTER_BASE_MISMATCH``, naming both bases) instead of being generated with over the
wrong base; a queue task on it is dead-lettered with that message.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llamafleet.common.v1 import common_pb2

from services.common.adapter_cache import CachedAdapter, check_ref, ref_str
from services.common.errors import FailedPrecondition
from services.common.full_weights import is_full_weights
from services.common.weight_files import (
    require_adapter_base,
    require_safetensors_adapter,
    require_trained_base,
)
from services.rollout.engines import GenerationEngine

logger = logging.getLogger(__name__)


class AdapterSource(Protocol):
    """Where adapter folders come from (``services.common.adapter_cache.AdapterCache``)."""

    def fetch(self, ref: common_pb2.AdapterRef) -> CachedAdapter: ...


@dataclass
class Resident:
    ref: common_pb2.AdapterRef
    name: str  # the engine's adapter name
    sha256: str
    size_bytes: int
    load_time: float  # epoch seconds
    last_used_time: float
    in_use: int = 0
    full: bool = False  # a full-weights policy version (a model of its own), not a LoRA adapter


class ResidentAdapters:
    """The LRU of adapter versions loaded into one engine."""

    def __init__(
        self,
        engine: GenerationEngine,
        source: AdapterSource | None,
        max_resident: int,
        base_model: Path | None = None,
        max_full: int = 2,
    ) -> None:
        if max_resident < 1 or max_full < 1:
            raise ValueError(
                f"max_resident and max_full must be >= 1, got {max_resident}, {max_full}"
            )
        self.engine = engine
        self.source = source
        self.base_model = base_model  # checked against each adapter's training base
        self.max_resident = max_resident
        self.max_full = max_full  # full-weights versions resident at once
        self._lock = threading.Lock()
        self._resident: OrderedDict[str, Resident] = OrderedDict()  # oldest use first
        self._loading: dict[str, threading.Lock] = {}
        self._names = itertools.count(1)

    def acquire(self, ref: common_pb2.AdapterRef) -> str | None:
        """Pin ``ref`` (loading it if needed) and return its engine name; None = base model."""
        check_ref(ref)
        if not ref.id:
            return None
        key = ref_str(ref)
        with self._lock:
            if (entry := self._pin(key)) is not None:
                return entry.name
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                if (entry := self._pin(key)) is not None:
                    return entry.name
            entry = self._load(ref, key)
            with self._lock:
                self._loading.pop(key, None)
                self._resident[key] = entry
                entry.in_use += 1
                evicted = self._pick_evictions()
        self._unload(evicted)
        return entry.name

    def release(self, ref: common_pb2.AdapterRef) -> None:
        if not ref.id:
            return
        with self._lock:
            entry = self._resident.get(ref_str(ref))
            if entry is not None and entry.in_use > 0:
                entry.in_use -= 1
            evicted = self._pick_evictions()
        self._unload(evicted)

    def load(self, ref: common_pb2.AdapterRef) -> Resident:
        """Make ``ref`` resident without keeping it pinned (LoadAdapter)."""
        self.acquire(ref)
        try:
            with self._lock:
                return _copy(self._resident[ref_str(ref)])
        finally:
            self.release(ref)

    def resident(self) -> list[Resident]:
        """Resident versions, most recently used first."""
        with self._lock:
            return [_copy(e) for e in reversed(self._resident.values())]

    def _pin(self, key: str) -> Resident | None:
        entry = self._resident.get(key)
        if entry is not None:
            entry.in_use += 1
            entry.last_used_time = time.time()
            self._resident.move_to_end(key)
        return entry

    def _load(self, ref: common_pb2.AdapterRef, key: str) -> Resident:
        if self.source is None:
            raise RuntimeError("no adapter source configured")  # pragma: no cover
        started = time.perf_counter()
        cached = self.source.fetch(ref)
        full = is_full_weights(cached.path)
        if not full:  # a full-weights version is a model of its own, whatever it started from
            require_trained_base(cached.base_model, self.base_model, f"adapter {key}")
        name = f"{'policy' if full else 'adapter'}{next(self._names)}"
        if full:
            self._load_full(key, name, cached.path)
        else:
            require_safetensors_adapter(cached.path, f"adapter {key}")
            require_adapter_base(cached.path, self.base_model, f"adapter {key}")
            reused = self._load_into_evicted_slot(name, cached.path)
            if reused is None:
                self.engine.load_adapter(name, cached.path)
        now = time.time()
        logger.info(
            "%s %s resident as %s (%.2fs incl. fetch%s)",
            "full-weights version" if full else "adapter",
            key,
            name,
            time.perf_counter() - started,
            "" if full or reused is None else f"; in the slot of {reused}, evicted",
        )
        ref_copy = common_pb2.AdapterRef(id=ref.id, version=ref.version)
        return Resident(ref_copy, name, cached.sha256, cached.size_bytes, now, now, full=full)

    def _load_into_evicted_slot(self, name: str, path: Path) -> str | None:
        """When making ``name`` resident will evict an idle LoRA version anyway, load ``name``
        into that version's engine slot (``replace_adapter``: an in-place copy of the tensors,
        no new PEFT adapter) and return the evicted version's key; None when there is none to
        evict, the engine cannot, or the configs differ (the caller then loads it fresh and the
        eviction happens as usual). Which versions stay resident is the same either way."""
        replace = getattr(self.engine, "replace_adapter", None)
        if replace is None:
            return None
        with self._lock:
            lora = [k for k, e in self._resident.items() if not e.full]
            if len(lora) < self.max_resident:
                return None
            key = next((k for k in lora if self._resident[k].in_use == 0), None)
            if key is None:
                return None
            victim = self._resident.pop(key)  # unpinnable from here on: nobody generates on it
        try:
            reused = replace(victim.name, name, path)
        except BaseException:
            self.engine.unload_adapter(victim.name)
            logger.info("adapter %s evicted (its slot failed to load %s)", key, name)
            raise
        if reused:
            logger.info("adapter %s evicted (LRU, limit %d)", key, self.max_resident)
            return key
        logger.debug("adapter %s: slot of %s does not fit, loading it fresh", name, key)
        with self._lock:
            if key in self._resident or key in self._loading:  # being loaded again meanwhile
                evicted = [victim]
            else:
                evicted = []
                self._resident[key] = victim
                self._resident.move_to_end(key, last=False)  # it was the least recently used
        self._unload(evicted)
        return None

    def _load_full(self, key: str, name: str, path: Path) -> None:
        try:
            self.engine.load_weights(name, path)
        except NotImplementedError as exc:  # the engine's reason (vllm's FULL_WEIGHTS_REFUSAL)
            raise FailedPrecondition(
                f"adapter {key} is a full-weights policy version and engine "
                f"{self.engine.name} cannot serve it: {exc}",
                reason="FULL_WEIGHTS_UNSUPPORTED",
            ) from None

    def _pick_evictions(self) -> list[Resident]:
        evicted = []
        for full, limit in ((False, self.max_resident), (True, self.max_full)):
            keys = [k for k, e in self._resident.items() if e.full == full]
            excess = len(keys) - limit
            for key in keys[:-1]:  # never the most recently used one
                if excess <= 0:
                    break
                if self._resident[key].in_use == 0:
                    evicted.append(self._resident.pop(key))
                    excess -= 1
        return evicted

    def _unload(self, evicted: list[Resident]) -> None:
        for entry in evicted:
            self.engine.unload_adapter(entry.name)
            limit = self.max_full if entry.full else self.max_resident
            logger.info("adapter %s evicted (LRU, limit %d)", ref_str(entry.ref), limit)


def _copy(entry: Resident) -> Resident:
    return Resident(
        **{
            **entry.__dict__,
            "ref": common_pb2.AdapterRef(id=entry.ref.id, version=entry.ref.version),
        }
    )
