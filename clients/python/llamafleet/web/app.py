"""The web UI's HTTP side: one static page (Train, Jobs, Chat, Cluster, Rewards, Evaluate tabs) and a small JSON API
that calls the services through ``llamafleet.client.Client``.

It keeps no job state: the Jobs tab lists jobs from the training service and reads their events
with ``WatchTrainingJob(after_sequence)``, so closing the browser stops nothing. Errors from the
services come back as JSON ``{"error": message}`` with an HTTP status from the gRPC code.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import Body, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from llamafleet import cluster, predict
from llamafleet.chat import Base, ChatBackend, UnknownModel
from llamafleet.client import Client, RpcError
from llamafleet.common.v1 import common_pb2
from llamafleet.data.v1 import data_pb2, data_service_pb2
from llamafleet.lf_keys import EXAMPLE_KINDS, STAGES
from llamafleet.reward.v1 import reward_pb2, reward_service_pb2
from llamafleet.reward_functions import component, function_info
from llamafleet.rollout.v1 import rollout_pb2
from llamafleet.training.v1 import training_pb2 as pb
from llamafleet.training.v1 import training_service_pb2 as api
from llamafleet.web import forms, registry

STATIC = Path(__file__).parent / "static"
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
JsonBody = Annotated[dict[str, Any], Body()]
MAX_EVENTS = 2000  # per poll; the page asks again after the last one it got


class WebError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _state(value: int) -> str:
    return pb.JobState.Name(value).removeprefix("JOB_STATE_")


def _time(ts) -> str:
    if not ts.seconds:
        return ""
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, UTC).isoformat(timespec="seconds")


def job_summary(job: pb.TrainingJob) -> dict[str, Any]:
    m = job.latest_metrics
    return {
        "id": job.id,
        "state": _state(job.state),
        "stage": pb.Stage.Name(job.spec.stage).removeprefix("STAGE_").lower(),
        "method": pb.FinetuningType.Name(job.spec.finetuning.type).split("_")[-1].lower(),
        "base_model": job.spec.base_model,
        "step": job.latest_step,
        "total_steps": job.total_steps,
        "loss": m.loss if m.HasField("loss") else None,
        "created": _time(job.create_time),
        "started": _time(job.start_time),
        "ended": _time(job.end_time),
        "failure_message": job.failure_message,
        "adapter_versions": [v.version for v in job.adapter_versions],
        "checkpoints": [{"step": c.step, "path": c.path} for c in job.checkpoints],
        "last_event_sequence": job.last_event_sequence,
    }


def event_row(event: pb.TrainingEvent) -> dict[str, Any]:
    kind = event.WhichOneof("event") or ""
    row: dict[str, Any] = {"sequence": event.sequence, "time": _time(event.time), "kind": kind}
    if kind == "metrics":
        m = event.metrics
        row.update(step=m.step, epoch=m.epoch, learning_rate=m.learning_rate)
        row["loss"] = m.loss if m.HasField("loss") else None
        row["eval_loss"] = m.eval_loss if m.HasField("eval_loss") else None
        row["tokens_per_second"] = m.tokens_per_second
        row["extra"] = dict(m.extra)
    elif kind == "state_change":
        sc = event.state_change
        row.update(state=_state(sc.state), previous=_state(sc.previous_state), message=sc.message)
    elif kind == "log":
        level = pb.LogLevel.Name(event.log.level).removeprefix("LOG_LEVEL_")
        row.update(level=level, message=event.log.message, logger=event.log.logger)
        row["rank"] = event.log.rank
    elif kind == "checkpoint_saved":
        row.update(step=event.checkpoint_saved.step, path=event.checkpoint_saved.path)
    elif kind == "adapter_published":
        row.update(version=event.adapter_published.version, step=event.adapter_published.step)
    return row


def _highlight(text: str, trained: list[str]) -> list[dict[str, Any]]:
    """``text`` cut into segments, each marked trained or not. The trained texts are found from
    the end backwards: trained spans (responses) come after the prompts that may repeat them."""
    marks, end = [], len(text)
    for piece in reversed(trained):
        at = text.rfind(piece, 0, end) if piece else -1
        if at >= 0:
            marks.append((at, at + len(piece)))
            end = at
    segments, pos = [], 0
    for start, stop in reversed(marks):
        if start > pos:
            segments.append({"text": text[pos:start], "trained": False})
        segments.append({"text": text[start:stop], "trained": True})
        pos = stop
    if pos < len(text):
        segments.append({"text": text[pos:], "trained": False})
    return segments


class WebApi:
    """The JSON API's work, separate from routing so tests can call it without HTTP."""

    def __init__(
        self,
        client: Client,
        run_dir: str = "",
        base_model: str = "",
        dataset_dir: str = "",
        bases: Sequence[Base] = (),
    ) -> None:
        """``bases``: the cluster's other base models (chat routes each adapter to its own)."""
        self.client, self.run_dir, self.base_model = client, run_dir, base_model
        self.dataset_dir = dataset_dir or (str(Path(run_dir) / "datasets") if run_dir else "")
        self.chat = ChatBackend(client, base_model, bases=bases) if base_model else None
        # predictions run on the default base: with several, another base's adapter is refused
        self.strict_predict = self.chat is not None and self.chat.several

    def info(self) -> dict[str, Any]:
        dataset_dir = self.dataset_dir
        return {
            "base_model": self.base_model,
            "run_dir": self.run_dir,
            "dataset_dir": dataset_dir,
            "stages": list(forms.STAGES),
            "methods": list(forms.METHODS),
            "defaults": {**forms.DEFAULTS, "model_name_or_path": self.base_model,
                         "dataset_dir": dataset_dir},
        }  # fmt: skip

    def datasets(self, dataset_dir: str) -> list[dict[str, Any]]:
        try:
            return registry.entries(dataset_dir)
        except registry.RegistryError as exc:
            raise WebError(400, str(exc)) from None

    def preview(self, form: dict[str, Any]) -> dict[str, Any]:
        dataset_dir, name = str(form.get("dataset_dir") or ""), str(form.get("dataset") or "")
        model = str(form.get("model_name_or_path") or "")
        if not (dataset_dir and name and model):
            raise WebError(400, "preview needs model_name_or_path, dataset_dir and dataset")
        stage = STAGES.get(str(form.get("stage") or "sft"))
        if stage is None:
            raise WebError(400, f"stage: {form.get('stage')!r} is not one of {list(STAGES)}")
        try:
            raw = registry.first_record(dataset_dir, name)
            fmt = registry.format_options(dataset_dir, name)
        except (registry.RegistryError, ValueError) as exc:
            raise WebError(400, str(exc)) from None
        tok = data_pb2.TokenizationOptions(
            tokenizer_path=str(Path(model).expanduser().absolute()),
            template=data_pb2.TemplateOptions(name=str(form.get("template") or "")),
            cutoff_len=_int(form, "cutoff_len"),
            train_on_prompt=form.get("train_on_prompt") is True,
            mask_history=form.get("mask_history") is True,
        )
        reply = self.client.data.PreviewExample(
            data_service_pb2.PreviewExampleRequest(
                record_json=json.dumps(raw),  # key order and integers as in the file
                format=fmt,
                kind=EXAMPLE_KINDS[stage],
                tokenization=tok,
            )
        )
        return {
            "record": raw,
            "kind": data_pb2.ExampleKind.Name(reply.kind).removeprefix("EXAMPLE_KIND_").lower(),
            "sequences": [
                {
                    "name": s.name,
                    "text": s.text,
                    "tokens": len(s.input_ids),
                    "trained_tokens": sum(1 for label in s.labels if label != -100),
                    "trained_texts": list(s.trained_texts),
                    "segments": _highlight(s.text, list(s.trained_texts)),
                    "truncated": s.truncated,
                }
                for s in reply.sequences
            ],
        }

    def render_yaml(self, form: dict[str, Any]) -> dict[str, Any]:
        try:
            text = forms.to_yaml(form)
            _, notes = forms.to_spec(text)
        except forms.FormError as exc:
            raise WebError(400, str(exc)) from None
        return {"yaml": text, "notes": notes}

    def create_job(self, text: str) -> dict[str, Any]:
        try:
            spec, notes = forms.to_spec(text)
        except forms.FormError as exc:
            raise WebError(400, str(exc)) from None
        job = self.client.training.CreateTrainingJob(api.CreateTrainingJobRequest(spec=spec)).job
        return {"job": job_summary(job), "notes": notes}

    def jobs(self) -> list[dict[str, Any]]:
        rows, token = [], ""
        while len(rows) < 500:
            page = self.client.training.ListTrainingJobs(
                api.ListTrainingJobsRequest(page_size=200, page_token=token)
            )
            rows += [job_summary(j) for j in page.jobs]
            token = page.next_page_token
            if not token:
                break
        return rows

    def job(self, job_id: str) -> pb.TrainingJob:
        return self.client.training.GetTrainingJob(api.GetTrainingJobRequest(job_id=job_id)).job

    def events(self, job_id: str, after: int) -> dict[str, Any]:
        """Events after ``after`` up to the job's latest one now (never waits for new ones)."""
        job = self.job(job_id)
        until = min(job.last_event_sequence, after + MAX_EVENTS)
        rows = []
        if until > after:
            request = api.WatchTrainingJobRequest(job_id=job_id, after_sequence=after)
            for reply in self.client.training.WatchTrainingJob(request, timeout=30):
                rows.append(event_row(reply.event))
                if reply.event.sequence >= until:
                    break
        return {"job": job_summary(job), "events": rows}

    def cancel(self, job_id: str) -> dict[str, Any]:
        reply = self.client.training.CancelTrainingJob(api.CancelTrainingJobRequest(job_id=job_id))
        return job_summary(reply.job)

    def models(self) -> list[str]:
        return self._chat().model_names()

    def send(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise WebError(400, "messages: give at least one {role, content} message")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise WebError(400, f"messages[{i}]: expected {{role, content}}")
            if m.get("role") not in ("system", "user", "assistant"):
                raise WebError(400, f"messages[{i}].role: use system, user or assistant")
        sampling = rollout_pb2.SamplingParams(max_tokens=_int(body, "max_tokens") or 64)
        if body.get("temperature") not in (None, ""):
            sampling.temperature = _float(body, "temperature")
        model = str(body.get("model") or "base")
        try:
            stream = self._chat().generate(model, messages, sampling)
            text, finish, tokens = "", "", 0
            for reply in stream:
                if reply.HasField("tokens"):
                    text += reply.tokens.text
                else:
                    finish = rollout_pb2.FinishReason.Name(reply.finished.finish_reason)
                    tokens = reply.finished.completion_tokens
        except UnknownModel as exc:
            raise WebError(404, str(exc)) from None
        except ValueError as exc:
            raise WebError(400, str(exc)) from None
        return {
            "model": model,
            "reply": text,
            "finish_reason": finish.removeprefix("FINISH_REASON_").lower(),
            "completion_tokens": tokens,
        }

    def cluster(self) -> dict[str, Any]:
        if not self.run_dir:
            raise WebError(400, "cluster status needs the local cluster's --run-dir")
        try:
            report = cluster.status(self.run_dir)
        except cluster.ClusterError as exc:
            raise WebError(503, str(exc)) from None
        report["base_model"] = self.base_model
        return report

    def reward_functions(self) -> list[dict[str, Any]]:
        response = self.client.reward.ListRewardFunctions(
            reward_service_pb2.ListRewardFunctionsRequest()
        )
        return [function_info(f) for f in response.functions]

    def reward_test(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"function", "args"?, "prompt"?, "completion", "reference"?}`` -> score and parts."""
        name = body.get("function")
        if not isinstance(name, str) or not name:
            raise WebError(400, "function: name a reward function")
        args = body.get("args") or {}
        if not isinstance(args, dict):
            raise WebError(400, "args: expected a JSON object")
        texts = {k: body.get(k) or "" for k in ("prompt", "completion", "reference")}
        if not all(isinstance(v, str) for v in texts.values()):
            raise WebError(400, "prompt, completion and reference must be strings")
        ref = common_pb2.RewardFunctionRef(name=name)
        try:
            ref.args.update(args)
        except (TypeError, ValueError) as exc:
            raise WebError(400, f"args: {exc}") from None
        item = reward_pb2.ScoreItem(
            item_id="web", prompt_text=texts["prompt"], completion_text=texts["completion"],
            reference_answer=texts["reference"],
        )  # fmt: skip
        response = self.client.reward.TestRewardFunction(
            reward_service_pb2.TestRewardFunctionRequest(functions=[ref], item=item)
        )
        return {
            "score": response.score,
            "components": [component(c) for c in response.components],
        }

    def eval_benchmark(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Evaluate tab's benchmark form -> ``RunBenchmark`` -> its tables."""
        if not self.base_model:
            raise WebError(400, "a benchmark needs the cluster's base model (--base-model)")
        texts = {k: body.get(k) or "" for k in ("model", "task_dir", "task", "split", "lang",
                                                "save_dir", "template")}  # fmt: skip
        if not all(isinstance(v, str) for v in texts.values()):
            raise WebError(400, "model, task_dir, task, split, lang, save_dir, template: strings")
        if not texts["task_dir"] or not texts["task"]:
            raise WebError(400, "task_dir and task: name the benchmark folder and its task")
        try:
            adapter = predict.adapter_ref(texts["model"] or "base")
        except ValueError as exc:
            raise WebError(400, str(exc)) from None
        request = api.RunBenchmarkRequest(
            base_model=self.base_model, adapter=adapter, task_dir=texts["task_dir"],
            task=texts["task"], split=texts["split"], lang=texts["lang"],
            save_dir=texts["save_dir"], template=texts["template"],
        )  # fmt: skip
        if body.get("n_shot") not in (None, ""):
            request.n_shot = _int(body, "n_shot")
        return predict.benchmark_dict(self.client.training.RunBenchmark(request, timeout=3600))

    def eval_predict(self, body: dict[str, Any]) -> dict[str, Any]:
        """The Evaluate tab's predictions form -> ``predict.predict`` -> its metrics."""
        if not self.base_model:
            raise WebError(400, "predictions need the cluster's base model (--base-model)")
        dataset, save_dir = body.get("dataset"), body.get("save_dir")
        if not isinstance(dataset, str) or not dataset:
            raise WebError(400, "dataset: the eval split's file (.jsonl or .json)")
        if not isinstance(save_dir, str) or not save_dir:
            raise WebError(400, "save_dir: where predictions.jsonl goes")
        try:
            records = predict.read_records(Path(dataset))
            return predict.predict(
                self.client, self.base_model, str(body.get("model") or "base"), records,
                Path(save_dir), fmt=str(body.get("format") or "alpaca"),
                max_tokens=_int(body, "max_tokens") or 128,
                temperature=_float(body, "temperature") if body.get("temperature") else 0.0,
                reward_function=str(body.get("reward_function") or ""),
                lang=str(body.get("lang") or "en"), strict_base=self.strict_predict,
            )  # fmt: skip
        except UnknownModel as exc:
            raise WebError(404, str(exc)) from None
        except (OSError, ValueError, ImportError) as exc:
            raise WebError(400, str(exc)) from None

    def _chat(self) -> ChatBackend:
        if self.chat is None:
            raise WebError(
                400, "chat needs a base model: start the cluster with `llamafleet up --base-model`"
            )
        return self.chat


def _int(data: dict, key: str) -> int:
    value = data.get(key)
    if value in (None, ""):
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise WebError(400, f"{key}: expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not number.is_integer():
        raise WebError(400, f"{key}: expected an integer, got {value!r}")
    return int(number)


def _float(data: dict, key: str) -> float:
    try:
        return float(data[key])
    except (TypeError, ValueError):
        raise WebError(400, f"{key}: expected a number, got {data[key]!r}") from None


def create_app(
    client: Client,
    run_dir: str = "",
    base_model: str = "",
    token: str = "",
    dataset_dir: str = "",
    bases: Sequence[Base] = (),
) -> FastAPI:
    """The app. ``token`` (when set) is required on every /api call as ``Bearer <token>``;
    ``dataset_dir`` is the registry the Train form starts with (default: the run's datasets)."""
    web = WebApi(client, run_dir, base_model, dataset_dir, bases)
    app = FastAPI(title="llamafleet web", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def check_token(request: Request, call_next):
        if token and request.url.path.startswith("/api/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        return await call_next(request)

    @app.exception_handler(WebError)
    async def web_error(_: Request, exc: WebError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RpcError)
    async def rpc_error(_: Request, exc: RpcError) -> JSONResponse:
        extra = [f"{f}: {d}" for f, d in exc.violations if f"{f}: {d}" not in exc.message]
        message = "\n".join([exc.message, *extra])
        body = {"error": message, "code": exc.code.name, "reason": exc.reason}
        return JSONResponse(body, status_code=HTTP_STATUS.get(exc.code, 500))

    @app.get("/")
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    def info() -> dict:
        return web.info()

    @app.get("/api/datasets")
    def datasets(dataset_dir: str) -> dict:
        return {"datasets": web.datasets(dataset_dir)}

    @app.post("/api/preview")
    def preview(form: dict) -> dict:
        return web.preview(form)

    @app.post("/api/yaml")
    def render_yaml(form: dict) -> dict:
        return web.render_yaml(form)

    @app.post("/api/jobs")
    def create_job(body: dict) -> dict:
        if not isinstance(body.get("yaml"), str):
            raise WebError(400, "yaml: give the job's YAML text")
        return web.create_job(body["yaml"])

    @app.get("/api/jobs")
    def jobs() -> dict:
        return {"jobs": web.jobs()}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: str) -> dict:
        return job_summary(web.job(job_id))

    @app.get("/api/jobs/{job_id}/events")
    def events(job_id: str, after: int = 0) -> dict:
        return web.events(job_id, max(after, 0))

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str) -> dict:
        return web.cancel(job_id)

    @app.get("/api/models")
    def models() -> dict:
        return {"models": web.models()}

    @app.post("/api/chat")
    def chat(body: dict) -> dict:
        return web.send(body)

    @app.get("/api/cluster")
    def cluster_status() -> dict:
        return web.cluster()

    @app.get("/api/reward/functions")
    def reward_functions() -> dict:
        return {"functions": web.reward_functions()}

    @app.post("/api/reward/test")
    def reward_test(body: dict) -> dict:
        return web.reward_test(body)

    @app.post("/api/eval/benchmark")
    def eval_benchmark(body: JsonBody) -> dict:
        return web.eval_benchmark(body)

    @app.post("/api/eval/predict")
    def eval_predict(body: JsonBody) -> dict:
        return web.eval_predict(body)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
