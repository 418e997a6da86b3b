"""proto <-> domain translation for ``llamafleet.rollout.v1.RolloutService``.

Generation runs in a worker thread (the engine is synchronous); its events cross into the event
loop through an ``asyncio.Queue`` and leave as ``GenerateResponse`` messages as soon as each token
is chosen. A caller that goes away (or whose deadline passes) sets the engine's cancel event, so
its sequences end with ABORT and stop using the model.
"""

from __future__ import annotations

import asyncio
import threading

from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2, rollout_service_pb2_grpc

from services.common.adapter_cache import check_ref
from services.common.errors import FieldViolation, InvalidArgument, PermissionDenied
from services.rollout.config import RolloutConfig
from services.rollout.convert import FINISH_REASONS, loaded_adapter, token_details
from services.rollout.engines import Finished, GenerationRequest, TokenDelta
from services.rollout.generator import Generator

_DONE = object()


class RolloutServicer(rollout_service_pb2_grpc.RolloutServiceServicer):
    def __init__(self, config: RolloutConfig, generator: Generator | None = None) -> None:
        self.config = config
        self.generator = generator if generator is not None else Generator(config)

    async def Generate(self, request: rollout_service_pb2.GenerateRequest, context):
        gen = self.generator
        engine = gen.require_engine()
        if bool(request.prompt_ids) == bool(request.prompt_text):
            raise InvalidArgument(
                "set exactly one of prompt_ids and prompt_text",
                reason="BAD_PROMPT",
                violations=[FieldViolation("prompt_ids", "exactly one of prompt_ids/prompt_text")],
            )
        check_ref(request.adapter)
        sampling = gen.sampling(request.sampling, allow_n=True)
        # bounded before any work; tokenizing and checking ids run off the event loop (a long
        # prompt takes seconds of CPU, and health must keep answering meanwhile)
        prompt = await asyncio.to_thread(gen.prompt_of, request.prompt_ids, request.prompt_text)

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        version = request.adapter.version if request.adapter.id else 0

        def put(item) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        def run() -> None:
            try:
                with gen.pinned(request.adapter) as pinned:
                    job = GenerationRequest(prompt, sampling, pinned.name)
                    for event in engine.generate(job, cancel):
                        put(event)
                put(_DONE)
            except BaseException as exc:  # re-raised in the handler, mapped by the interceptor
                put(exc)

        worker = threading.Thread(target=run, name="generate", daemon=True)
        worker.start()
        try:
            while True:
                item = await events.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, TokenDelta):
                    delta = rollout_pb2.TokenDelta(
                        token_ids=item.token_ids, logprobs=item.logprobs, text=item.text
                    )
                    if sampling.top_logprobs is not None:
                        delta.details.extend(token_details(engine, item))
                    yield rollout_service_pb2.GenerateResponse(
                        sequence_index=item.index, tokens=delta
                    )
                elif isinstance(item, Finished):
                    yield rollout_service_pb2.GenerateResponse(
                        sequence_index=item.index,
                        finished=rollout_pb2.GenerationFinished(
                            finish_reason=FINISH_REASONS[item.reason],
                            prompt_tokens=item.prompt_tokens,
                            completion_tokens=item.completion_tokens,
                            adapter_version=version,
                        ),
                    )
        finally:
            cancel.set()  # the caller went away early: stop generating for it

    async def LoadAdapter(self, request: rollout_service_pb2.LoadAdapterRequest, context):
        if request.source_address:
            raise PermissionDenied(
                "source_address is not accepted: adapters come only from the training service "
                "this worker's owner configured (training_address); name the adapter alone",
                reason="SOURCE_ADDRESS_REFUSED",
                violations=[FieldViolation("source_address", "must be empty (deprecated)")],
            )
        gen = self.generator
        gen.require_engine()
        if not request.adapter.id:
            raise InvalidArgument(
                "adapter.id is empty; the base model needs no loading",
                reason="BAD_ADAPTER",
                violations=[FieldViolation("adapter.id", "must name an adapter")],
            )
        assert gen.adapters is not None
        entry = await asyncio.to_thread(gen.adapters.load, request.adapter)
        return rollout_service_pb2.LoadAdapterResponse(adapter=loaded_adapter(entry))

    async def ListAdapters(self, request: rollout_service_pb2.ListAdaptersRequest, context):
        adapters = self.generator.adapters
        entries = adapters.resident() if adapters is not None else []
        return rollout_service_pb2.ListAdaptersResponse(
            adapters=[loaded_adapter(e) for e in entries]
        )
