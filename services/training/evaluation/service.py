"""``RunBenchmark`` on the service side (no torch): check the request against the service's
roots and bounds, start ``python -m services.training.evaluation`` with a request file, wait,
and translate its result; a cancelled call kills the process. One benchmark process runs at a
time per service (each loads a model); later calls wait their turn within their deadline."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from pathlib import Path

from llamafleet.training.v1 import training_service_pb2 as api

from services.common.errors import FailedPrecondition, InvalidArgument, invalid
from services.training.config import TrainingConfig
from services.training.jobs import access
from services.training.spec import benchmark as options


def benchmark_request(request: api.RunBenchmarkRequest, config: TrainingConfig, manager) -> dict:
    """The checked request as the process reads it (paths resolved under the roots)."""
    if not request.base_model:
        raise invalid("base_model", "name the base model folder")
    if not request.task_dir:
        raise invalid("task_dir", "name the folder holding the benchmark")
    reads = access.model_roots(config)
    base = reads.resolve(request.base_model, "base_model", "dir")
    task_dir = reads.resolve(request.task_dir, "task_dir", "dir")
    split = request.split or "validation"
    n_shot = request.n_shot if request.HasField("n_shot") else 5
    lang = request.lang or "en"
    bad = options.option_violations(request.task, split, n_shot, lang)
    if bad:
        raise invalid(*bad[0])
    save_dir = ""
    if request.save_dir:
        save_dir = str(access.write_roots(config).resolve_for_write(request.save_dir, "save_dir"))
    adapter_path = ""
    if request.adapter.id:
        view = manager.view(request.adapter.id)
        _version, path, _entry = view.resolve_adapter(request.adapter.version)
        adapter_path = str(path)
    if not config.data_address:
        raise FailedPrecondition(
            "the training service has no data_address, and benchmark prompts are rendered by "
            "the data service; set LLAMAFLEET_TRAINING_DATA_ADDRESS",
            reason="NO_DATA_SERVICE",
        )
    return {
        "base_model": str(base),
        "adapter_path": adapter_path,
        "task_dir": str(task_dir),
        "task": request.task,
        "split": split,
        "n_shot": n_shot,
        "lang": lang,
        "template": request.template,
        "save_dir": save_dir,
    }


async def run_benchmark(
    request: api.RunBenchmarkRequest, config: TrainingConfig, manager, slot: asyncio.Semaphore
) -> api.RunBenchmarkResponse:
    spec = await asyncio.to_thread(benchmark_request, request, config, manager)
    async with slot:
        return await _run(spec, config)


async def _run(spec: dict, config: TrainingConfig) -> api.RunBenchmarkResponse:
    work = Path(config.jobs_dir) / ".benchmarks" / uuid.uuid4().hex
    work.mkdir(parents=True)
    try:
        spec["out"] = str(work / "result.json")
        (work / "request.json").write_text(json.dumps(spec))
        argv = [sys.executable, "-m", "services.training.evaluation", "--request",
                str(work / "request.json"), "--data-address", config.data_address]  # fmt: skip
        env = {"LLAMAFLEET_TOKEN": config.auth_token} if config.auth_token else {}
        with (work / "benchmark.log").open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=log, stderr=log, env={**_environ(), **env}
            )
            try:
                await proc.wait()
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
        out = work / "result.json"
        result = json.loads(out.read_text()) if out.is_file() else {"error": "no result"}
        if "error" in result:
            if result.get("kind") == "invalid":
                raise InvalidArgument(f"benchmark: {result['error']}", reason="BAD_BENCHMARK")
            raise FailedPrecondition(
                f"benchmark failed: {result['error']}", reason="BENCHMARK_FAILED"
            )
        return _response(result, spec["save_dir"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _response(result: dict, save_dir: str) -> api.RunBenchmarkResponse:
    response = api.RunBenchmarkResponse(
        accuracy=result["accuracy"], total=result["total"], save_dir=save_dir
    )
    for s in result["subjects"]:
        response.subjects.append(api.SubjectScore(**s))
    response.categories.update(result["categories"])
    return response
