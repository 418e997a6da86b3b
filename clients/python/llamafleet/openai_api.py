"""An OpenAI-compatible HTTP front for the rollout service: `/v1/chat/completions` and `/v1/models`.

Each training job's adapter is addressable as a model name (``base``, ``<job_id>``,
``<job_id>@<version>``; see ``chat.py``, which does the rendering and generation), so the usual
OpenAI client libraries talk to fine-tuned adapters. This module only translates HTTP and
OpenAI JSON; it holds no model and imports no torch.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from llamafleet.chat import ChatBackend, UnknownModel
from llamafleet.client import Client, RpcError
from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2

FINISH = {
    rollout_pb2.FINISH_REASON_STOP: "stop",
    rollout_pb2.FINISH_REASON_LENGTH: "length",
    rollout_pb2.FINISH_REASON_ABORT: "stop",
}
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    tools: list[dict[str, Any]] | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "api_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def _from_rpc(err: RpcError, param: str | None = None) -> ApiError:
    detail = err.message + "".join(f"; {f}: {d}" for f, d in err.violations)
    return ApiError(HTTP_STATUS.get(err.code, 500), detail, param, err.reason.lower())


class Gateway:
    """OpenAI requests in, ``ChatBackend`` calls out, OpenAI JSON back."""

    def __init__(self, client: Client, base_model_path: str) -> None:
        self.backend = ChatBackend(client, base_model_path)

    def models(self) -> list[dict[str, Any]]:
        created = int(time.time())
        return [
            {"id": name, "object": "model", "created": created, "owned_by": "llamafleet"}
            for name in self.backend.model_names()
        ]

    def generate(
        self, request: ChatCompletionRequest
    ) -> Iterator[rollout_service_pb2.GenerateResponse]:
        sampling = rollout_pb2.SamplingParams(n=request.n)
        if request.temperature is not None:
            sampling.temperature = request.temperature
        if request.top_p is not None:
            sampling.top_p = request.top_p
        max_tokens = request.max_completion_tokens or request.max_tokens
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if request.seed is not None:
            sampling.seed = request.seed
        if request.stop:
            sampling.stop.extend([request.stop] if isinstance(request.stop, str) else request.stop)
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        try:
            return self.backend.generate(request.model, messages, sampling, request.tools)
        except UnknownModel as exc:
            raise ApiError(
                404, f"{exc}; GET /v1/models lists them", "model", "model_not_found"
            ) from None
        except ValueError as exc:
            raise ApiError(400, str(exc), "model") from None
        except RpcError as err:
            raise _from_rpc(err) from None

    def complete(self, request: ChatCompletionRequest) -> dict[str, Any]:
        texts = [""] * request.n
        finish = ["stop"] * request.n
        prompt_tokens = completion_tokens = 0
        for reply in self.generate(request):
            i = reply.sequence_index
            if reply.HasField("tokens"):
                texts[i] += reply.tokens.text
            else:
                finish[i] = FINISH.get(reply.finished.finish_reason, "stop")
                prompt_tokens = reply.finished.prompt_tokens
                completion_tokens += reply.finished.completion_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "finish_reason": finish[i],
                }
                for i in range(request.n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def stream(self, request: ChatCompletionRequest) -> Iterator[str]:
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.model,
        }

        def chunk(index: int, delta: dict, finish: str | None = None) -> str:
            choice = {"index": index, "delta": delta, "finish_reason": finish}
            return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

        replies = iter(self.generate(request))
        first = next(replies, None)  # a failure before the first token is an HTTP error
        started: set[int] = set()
        try:
            for reply in itertools.chain([first] if first else [], replies):
                i = reply.sequence_index
                if i not in started:
                    started.add(i)
                    yield chunk(i, {"role": "assistant", "content": ""})
                if reply.HasField("tokens"):
                    if reply.tokens.text:
                        yield chunk(i, {"content": reply.tokens.text})
                else:
                    yield chunk(i, {}, FINISH.get(reply.finished.finish_reason, "stop"))
        except RpcError as err:
            error = {"message": err.message, "type": "api_error", "code": err.reason.lower()}
            yield f"data: {json.dumps({'error': error})}\n\n"
        yield "data: [DONE]\n\n"


def create_app(client: Client, base_model_path: str, api_key: str = "") -> FastAPI:
    """The FastAPI app; ``api_key`` (when set) is required as ``Authorization: Bearer <key>``."""
    gateway = Gateway(client, base_model_path)
    app = FastAPI(title="llamafleet OpenAI-compatible API")

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.headers.get("authorization") != f"Bearer {api_key}":
            return ApiError(401, "missing or wrong API key", code="invalid_api_key").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def bad_body(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg', 'invalid request body')}"
        return ApiError(400, message, where or None, "invalid_request").response()

    @app.exception_handler(RpcError)
    async def rpc_error(_: Request, exc: RpcError) -> JSONResponse:
        return _from_rpc(exc).response()

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": gateway.models()}

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest):
        if request.n < 1:
            raise ApiError(400, "n must be at least 1", "n")
        if request.stream:
            body = gateway.stream(request)
            first = next(body)  # surfaces model/prompt errors as an HTTP status, not a stream
            return StreamingResponse(_prepend(first, body), media_type="text/event-stream")
        return gateway.complete(request)

    return app


def _prepend(first: str, rest: Iterator[str]) -> Iterator[str]:
    yield first
    yield from rest
