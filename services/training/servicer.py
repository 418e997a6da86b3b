"""proto <-> domain translation for ``llamafleet.training.v1.TrainingService``.

Jobs are run by ``jobs.manager.JobManager``, read back by ``jobs.store.JobView``; adapters are
streamed by ``adapters.store`` and exported by ``adapters.export``. Blocking work (hashing an adapter, merging a model)
runs in worker threads so the event loop keeps serving other calls.
"""

from __future__ import annotations

import asyncio

from llamafleet.common.v1 import common_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from llamafleet.training.v1 import training_service_pb2_grpc

from services.common.errors import invalid
from services.common.full_weights import is_full_weights
from services.training.adapters import export
from services.training.adapters import store as adapter_store
from services.training.config import TrainingConfig
from services.training.evaluation.service import run_benchmark
from services.training.jobs import access
from services.training.jobs.manager import JobManager
from services.training.jobs.store import EventTail
from services.training.spec.normalize import TERMINAL_STATES


def _is_terminal(event: pb.TrainingEvent) -> bool:
    return event.WhichOneof("event") == "state_change" and event.state_change.state in (
        TERMINAL_STATES
    )


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, config: TrainingConfig, manager: JobManager | None = None) -> None:
        self.config = config
        self.manager = manager if manager is not None else JobManager(config).start()
        self._benchmark_slot = asyncio.Semaphore(1)  # one benchmark process at a time

    async def CreateTrainingJob(self, request, context):
        job = await asyncio.to_thread(self.manager.create, request.spec)
        return api.CreateTrainingJobResponse(job=job)

    async def GetTrainingJob(self, request, context):
        job = await asyncio.to_thread(self.manager.get, request.job_id)
        return api.GetTrainingJobResponse(job=job)

    async def ListTrainingJobs(self, request, context):
        jobs, token = await asyncio.to_thread(
            self.manager.list, list(request.states), request.page_size, request.page_token
        )
        return api.ListTrainingJobsResponse(jobs=jobs, next_page_token=token)

    async def CancelTrainingJob(self, request, context):
        job = await asyncio.to_thread(self.manager.cancel, request.job_id)
        return api.CancelTrainingJobResponse(job=job)

    async def WatchTrainingJob(self, request, context):
        if request.after_sequence < 0:
            raise invalid("after_sequence", "must be >= 0")
        view = self.manager.view(request.job_id)
        tail = EventTail(view.dir, request.after_sequence)
        pending: list[pb.TrainingEvent] = []
        while True:
            pending = pending or await asyncio.to_thread(tail.poll)  # reads the event log
            if not pending:
                state, last_sequence = await asyncio.to_thread(self.manager.progress, view.id)
                if state in TERMINAL_STATES and tail.sequence >= last_sequence:
                    return  # the watcher already saw the end
                await asyncio.sleep(self.config.poll_interval_s)
                continue
            event = pending.pop(0)
            yield api.WatchTrainingJobResponse(event=event)
            if _is_terminal(event) and not pending:
                pending = await asyncio.to_thread(tail.poll)
                if not pending:
                    return  # ends after the event that made the job terminal

    async def FetchAdapter(self, request, context):
        if request.offset < 0:
            raise invalid("offset", "must be >= 0")
        view = self.manager.view(request.adapter.id)
        version, folder, entry = await asyncio.to_thread(
            view.resolve_adapter, request.adapter.version
        )
        archive, info = await asyncio.to_thread(adapter_store.archive_info, folder)
        if request.offset > info.total_size:
            raise invalid("offset", f"past the end of the archive ({info.total_size} bytes)")
        blob = pb.AdapterBlobInfo(
            adapter=common_pb2.AdapterRef(id=view.id, version=version),
            total_size=info.total_size,
            sha256=info.sha256,
            format=(
                pb.ADAPTER_FORMAT_FULL_SAFETENSORS
                if is_full_weights(folder)
                else pb.ADAPTER_FORMAT_PEFT_TAR
            ),
            base_model=view.spec.base_model,
            stage=view.spec.stage,
            step=entry.step,
        )
        chunks = archive.chunks(request.offset)
        first = True
        while True:
            item = await asyncio.to_thread(next, chunks, None)
            if item is None and not first:
                return
            offset, data = item if item is not None else (request.offset, b"")
            chunk = pb.AdapterChunk(offset=offset, data=data)
            if first:
                chunk.info.CopyFrom(blob)
                first = False
            yield api.FetchAdapterResponse(chunk=chunk)
            if item is None:
                return

    async def ExportModel(self, request, context):
        # where it may write is checked before anything else (export_roots, never the jobs dir)
        target = ""
        if request.output_dir:
            target = str(
                await asyncio.to_thread(access.export_dir, request.output_dir, self.config)
            )
        if request.mode not in pb.ExportMode.values():
            raise invalid("mode", f"unknown ExportMode {request.mode}")
        view = self.manager.view(request.job_id)
        out, version, files = await asyncio.to_thread(
            export.export_job, view, request.version, request.mode, target
        )
        return api.ExportModelResponse(
            output_dir=str(out), version=version, mode=request.mode, files=files
        )

    async def RunBenchmark(self, request, context):
        return await run_benchmark(request, self.config, self.manager, self._benchmark_slot)
