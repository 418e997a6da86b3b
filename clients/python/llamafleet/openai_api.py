"""An OpenAI-compatible HTTP front for the rollout service: `/v1/chat/completions`,
`/v1/completions`, `/v1/models` and `/v1/models/{id}`.

Each training job's adapter is addressable as a model name (``base``, ``<job_id>``,
``<job_id>@<version>``; see ``chat.py``, which does the rendering and generation), so the usual
OpenAI client libraries talk to fine-tuned adapters. A cluster with several base models lists
every base by name and the adapters of each, and sends each request to the rollout service of
the model's base; ``<base>/<job_id>[@<version>]`` on a base the job was not trained on is a 400
(code ``model_base_mismatch``) naming both bases. This module only translates HTTP and
OpenAI JSON; it holds no model and imports no torch.

What follows OpenAI's API reference, and how:

* Validation as OpenAI validates (temperature in [0, 2], top_p in [0, 1], n in [1, 128], at most 4
  stop strings, top_logprobs in [0, 20] and only with logprobs, stream_options only with stream,
  unknown body fields refused): 400 ``{"error": {message, type, param, code}}`` with ``param`` the
  field path. Errors from the services name the OpenAI field their field violation maps to
  (``sampling.top_p`` -> ``top_p``, ``record.messages...`` -> ``messages``). A body that is not
  JSON has ``param: null``. Unknown routes (404) and wrong methods (405) use the same shape.
* Tool calls: the generated text is read by the data service (``ParseToolCalls``: the same
  tool-format code that renders calls for training) in the tool format the server was started
  with (``--tool-format``, or the tool format of the ``--template`` it renders with); calls become ``tool_calls`` with ``finish_reason: "tool_calls"``.
  A stream with tools holds each sequence's text until it ends (a call is recognised only whole),
  then sends the calls as OpenAI streams them (one delta per call with id, name and arguments).
  ``tool_choice`` ``"required"`` or a named function: the output is constrained to a JSON Schema
  of the call(s) (``openai_tools``, as vLLM does) through the engine's structured outputs; an
  engine without them (hf) answers UNIMPLEMENTED, here a 400 naming ``tool_choice``.
* ``response_format`` ``json_object`` / ``json_schema``: constrained decoding in the engine (vLLM
  structured outputs); an engine without it (hf) answers UNIMPLEMENTED, here a 400 naming
  ``response_format``.
* ``logprobs`` / ``top_logprobs``: the engine's per-token log-probs (log-softmax of the raw
  logits, the quantity training uses) and its top-k alternatives.
* ``presence_penalty``, ``frequency_penalty``, ``logit_bias`` (non-zero) and legacy ``suffix``
  have no engine counterpart: refused with 400 rather than ignored.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llamafleet.chat import Base, ChatBackend, UnknownModel, WrongBase
from llamafleet.client import Client, RpcError
from llamafleet.openai_requests import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    SampledRequest,
    from_rpc,
    validation_error,
)
from llamafleet.openai_tools import forced_calls, forced_schema, is_forced
from llamafleet.rollout.v1 import rollout_pb2, rollout_service_pb2

FINISH = {
    rollout_pb2.FINISH_REASON_STOP: "stop",
    rollout_pb2.FINISH_REASON_LENGTH: "length",
    rollout_pb2.FINISH_REASON_ABORT: "stop",
}
# --- generation -----------------------------------------------------------------------------


@dataclass
class Sequence:
    """One of the n sequences, gathered from the stream."""

    text: str = ""
    finish: str = "stop"
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    details: list[Any] = field(default_factory=list)  # rollout_pb2.TokenDetail per token


def _token_logprob(token: str, token_bytes: bytes, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token_bytes)}


def chat_logprobs(logprobs: list[float], details: list[Any]) -> dict[str, Any]:
    content = []
    for lp, d in zip(logprobs, details, strict=True):
        entry = _token_logprob(d.token, d.token_bytes, lp)
        entry["top_logprobs"] = [_token_logprob(t.token, t.token_bytes, t.logprob) for t in d.top]
        content.append(entry)
    return {"content": content, "refusal": None}


def legacy_logprobs(logprobs: list[float], details: list[Any], offset: int) -> dict[str, Any]:
    tokens, offsets, tops = [], [], []
    for d in details:
        tokens.append(d.token)
        offsets.append(offset)
        offset += len(d.token)
        tops.append({t.token: t.logprob for t in d.top})
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": tops,
        "text_offset": offsets,
    }


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


class Gateway:
    """OpenAI requests in, ``ChatBackend`` calls out, OpenAI JSON back."""

    def __init__(
        self,
        client: Client,
        base_model_path: str,
        tool_format: str = "",
        template: str = "",
        bases: Seq[Base] = (),
    ) -> None:
        self.backend = ChatBackend(client, base_model_path, template, bases)
        self.tool_format = tool_format
        self.template = template

    # --- models ---

    def models(self) -> list[dict[str, Any]]:
        created = int(time.time())
        return [
            {"id": name, "object": "model", "created": created, "owned_by": "llamafleet"}
            for name in self.backend.model_names()
        ]

    def model(self, model_id: str) -> dict[str, Any]:
        for entry in self.models():
            if entry["id"] == model_id or (
                entry["id"] == "base" and model_id in self.backend.base_names
            ):
                return {**entry, "id": model_id}
        raise ApiError(
            404,
            f"The model '{model_id}' does not exist; GET /v1/models lists them",
            "model",
            "model_not_found",
        )

    # --- sampling parameters ---

    def _sampling(self, r: SampledRequest, max_tokens: int | None) -> rollout_pb2.SamplingParams:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(r, name):
                raise ApiError(
                    400,
                    f"'{name}' is not supported: llamafleet's engines apply no "
                    "presence/frequency penalty; leave it 0",
                    name,
                    "unsupported_parameter",
                )
        if r.logit_bias:
            raise ApiError(
                400,
                "'logit_bias' is not supported by llamafleet's engines; leave it empty",
                "logit_bias",
                "unsupported_parameter",
            )
        if r.stream_options is not None and not r.stream:
            raise ApiError(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options",
                "invalid_value",
            )
        sampling = rollout_pb2.SamplingParams(n=r.n)
        if r.temperature is not None:
            sampling.temperature = r.temperature
        if r.top_p is not None:
            sampling.top_p = r.top_p
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if r.seed is not None:
            sampling.seed = r.seed
        if r.stop:
            sampling.stop.extend([r.stop] if isinstance(r.stop, str) else r.stop)
        return sampling

    def _chat_sampling(self, r: ChatCompletionRequest) -> rollout_pb2.SamplingParams:
        sampling = self._sampling(r, r.max_completion_tokens or r.max_tokens)
        if r.top_logprobs is not None and not r.logprobs:
            raise ApiError(
                400,
                "Invalid value for 'top_logprobs': it requires 'logprobs' to be true.",
                "top_logprobs",
                "invalid_value",
            )
        if r.logprobs:
            sampling.top_logprobs = r.top_logprobs or 0
        if r.tool_choice is not None and not r.tools:
            raise ApiError(
                400,
                "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
                "are specified.",
                "tool_choice",
                "invalid_value",
            )
        forced = bool(r.tools) and is_forced(r.tool_choice)
        if forced and r.response_format is not None and r.response_format.type != "text":
            raise ApiError(
                400,
                "'response_format' cannot be combined with 'tool_choice' 'required' or a named "
                "function: both constrain the output (the call's JSON is the output here)",
                "response_format",
                "invalid_value",
            )
        if forced:  # the call's JSON Schema, enforced like response_format's
            schema = forced_schema(r.tools, r.tool_choice, r.parallel_tool_calls)
            sampling.structured_output.json_schema = json.dumps(schema)
        elif r.tools and r.tool_choice != "none" and not (self.tool_format or self.template):
            raise ApiError(
                400,
                "this server reads no tool calls: start `llamafleet api --template NAME` (the "
                "model's chat template, whose tool format is used) or `--tool-format FORMAT` "
                "(qwen, llama3, default, ...), or send tool_choice 'none'",
                "tools",
                "unsupported_parameter",
            )
        fmt = r.response_format
        if fmt is not None and fmt.type == "json_object":
            if not any("json" in json.dumps(m.content).lower() for m in r.messages):
                raise ApiError(
                    400,
                    "'messages' must contain the word 'json' in some form, to use "
                    "'response_format' of type 'json_object'.",
                    "messages",
                    "invalid_value",
                )
            sampling.structured_output.json_object = True
        elif fmt is not None and fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ApiError(
                    400,
                    "Missing required parameter: 'response_format.json_schema'.",
                    "response_format.json_schema",
                    "missing_required_parameter",
                )
            sampling.structured_output.json_schema = json.dumps(fmt.json_schema.schema_ or {})
        return sampling

    # --- running ---

    def _run(self, start, names: dict[str, str]) -> Iterator[rollout_service_pb2.GenerateResponse]:
        try:
            return start()
        except UnknownModel as exc:
            raise ApiError(
                404, f"{exc}; GET /v1/models lists them", "model", "model_not_found"
            ) from None
        except WrongBase as exc:
            raise ApiError(400, str(exc), "model", "model_base_mismatch") from None
        except ValueError as exc:
            raise ApiError(400, str(exc), "model") from None
        except RpcError as err:
            raise from_rpc(err, **names) from None

    def chat_stream(self, r: ChatCompletionRequest):
        sampling = self._chat_sampling(r)
        messages = [m.model_dump(exclude_none=True) for m in r.messages]
        names = {"max_tokens": "max_completion_tokens" if r.max_completion_tokens else "max_tokens"}
        if r.tools and is_forced(r.tool_choice):
            names["structured"] = "tool_choice"
        return self._run(
            lambda: self.backend.generate(r.model, messages, sampling, r.tools), names
        ), names

    @staticmethod
    def gather(replies, n: int) -> tuple[list[Sequence], int, int]:
        seqs = [Sequence() for _ in range(n)]
        prompt_tokens = completion_tokens = 0
        for reply in replies:
            seq = seqs[reply.sequence_index]
            if reply.HasField("tokens"):
                _add(seq, reply.tokens)
            else:
                seq.finish = FINISH.get(reply.finished.finish_reason, "stop")
                prompt_tokens = reply.finished.prompt_tokens
                completion_tokens += reply.finished.completion_tokens
        return seqs, prompt_tokens, completion_tokens

    def tool_calls(self, r: ChatCompletionRequest, text: str) -> list[dict[str, Any]]:
        if not r.tools or r.tool_choice == "none":
            return []
        if is_forced(r.tool_choice):
            calls = forced_calls(r.tool_choice, text)
        else:
            calls = self._parsed_calls(text)
        return [
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            for name, arguments in calls
        ]

    def _parsed_calls(self, text: str) -> list[tuple[str, str]]:
        """Calls in the model's own text, read by the data service in the tool format."""
        try:
            calls = self.backend.parse_tool_calls(text, self.tool_format)
        except RpcError as err:
            raise from_rpc(err, "tools") from None
        return list(calls)

    def chat(self, r: ChatCompletionRequest) -> dict[str, Any]:
        replies, names = self.chat_stream(r)
        try:
            seqs, prompt_tokens, completion_tokens = self.gather(replies, r.n)
        except RpcError as err:
            raise from_rpc(err, **names) from None
        choices = []
        for i, seq in enumerate(seqs):
            message: dict[str, Any] = {"role": "assistant", "content": seq.text}
            finish = seq.finish
            calls = self.tool_calls(r, seq.text)
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
                finish = "tool_calls"
            logprobs = chat_logprobs(seq.logprobs, seq.details) if r.logprobs else None
            choices.append(
                {"index": i, "message": message, "logprobs": logprobs, "finish_reason": finish}
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": r.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }

    def chat_chunks(self, r: ChatCompletionRequest) -> Iterator[str]:
        """The SSE stream. The first item is produced before any byte is sent, so an error in
        the request or before the first token is still an HTTP error."""
        replies, names = self.chat_stream(r)
        usage_on = bool(r.stream_options and r.stream_options.include_usage)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": r.model,
        }

        def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None) -> str:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            extra = {"usage": None} if usage_on else {}
            return _sse({**base, "choices": [choice], **extra})

        replies = iter(replies)
        try:
            first = next(replies, None)  # a failure before the first token is an HTTP error
        except RpcError as err:
            raise from_rpc(err, **names) from None
        yield ""
        buffered = bool(r.tools) and r.tool_choice != "none"
        seqs: dict[int, Sequence] = {}
        prompt_tokens = completion_tokens = 0
        try:
            for reply in itertools.chain([first] if first else [], replies):
                i = reply.sequence_index
                if i not in seqs:
                    seqs[i] = Sequence()
                    yield chunk(i, {"role": "assistant", "content": ""})
                seq = seqs[i]
                if reply.HasField("tokens"):
                    t = reply.tokens
                    if buffered:
                        _add(seq, t)
                        continue
                    logprobs = None
                    if r.logprobs:
                        logprobs = chat_logprobs(list(t.logprobs), list(t.details))
                    if t.text or logprobs:
                        yield chunk(i, {"content": t.text}, None, logprobs)
                    continue
                finish = FINISH.get(reply.finished.finish_reason, "stop")
                prompt_tokens = reply.finished.prompt_tokens
                completion_tokens += reply.finished.completion_tokens
                if buffered:
                    calls = self.tool_calls(r, seq.text)
                    logprobs = chat_logprobs(seq.logprobs, seq.details) if r.logprobs else None
                    if calls:
                        for k, call in enumerate(calls):
                            yield chunk(i, {"tool_calls": [{"index": k, **call}]}, None, logprobs)
                            logprobs = None
                        finish = "tool_calls"
                    elif seq.text or logprobs:
                        yield chunk(i, {"content": seq.text}, None, logprobs)
                yield chunk(i, {}, finish)
            if usage_on:
                usage = _usage(prompt_tokens, completion_tokens)
                yield _sse({**base, "choices": [], "usage": usage})
        except (RpcError, ApiError) as err:
            code = err.reason.lower() if isinstance(err, RpcError) else err.code
            error = {"message": err.message, "type": "api_error", "param": None, "code": code}
            yield _sse({"error": error})
        yield "data: [DONE]\n\n"

    # --- legacy completions ---

    def _prompts(self, r: CompletionRequest) -> list[str | list[int]]:
        p = r.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ApiError(400, "Invalid 'prompt': must not be empty.", "prompt", "invalid_value")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def _completion_sampling(self, r: CompletionRequest) -> rollout_pb2.SamplingParams:
        if r.suffix:
            raise ApiError(
                400,
                "'suffix' (insertion) is not supported: the models here are not trained for it",
                "suffix",
                "unsupported_parameter",
            )
        if r.best_of is not None and r.best_of != r.n:
            raise ApiError(
                400,
                "'best_of' other than n is not supported (no server-side ranking of samples)",
                "best_of",
                "unsupported_value",
            )
        if r.echo and r.logprobs is not None:
            raise ApiError(
                400,
                "'echo' with 'logprobs' is not supported: the engines give no prompt log-probs",
                "echo",
                "unsupported_value",
            )
        sampling = self._sampling(r, r.max_tokens)
        if r.logprobs is not None:
            sampling.top_logprobs = r.logprobs
        return sampling

    def completion_runs(self, r: CompletionRequest):
        sampling = self._completion_sampling(r)
        prompts = self._prompts(r)
        if r.echo and any(not isinstance(p, str) for p in prompts):
            raise ApiError(400, "'echo' needs text prompts here", "echo", "unsupported_value")
        names = {"prompt_field": "prompt"}
        return [
            (p, self._run(lambda p=p: self.backend.complete(r.model, p, sampling), names))
            for p in prompts
        ]

    def completion(self, r: CompletionRequest) -> dict[str, Any]:
        runs = self.completion_runs(r)
        choices, prompt_total, completion_total = [], 0, 0
        for k, (prompt, replies) in enumerate(runs):
            try:
                seqs, prompt_tokens, completion_tokens = self.gather(replies, r.n)
            except RpcError as err:
                raise from_rpc(err, prompt_field="prompt") from None
            prompt_total += prompt_tokens
            completion_total += completion_tokens
            for j, seq in enumerate(seqs):
                echo = prompt if r.echo else ""
                logprobs = None
                if r.logprobs is not None:
                    logprobs = legacy_logprobs(seq.logprobs, seq.details, len(echo))
                choices.append(
                    {
                        "index": k * r.n + j,
                        "text": echo + seq.text,
                        "logprobs": logprobs,
                        "finish_reason": seq.finish,
                    }
                )
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": r.model,
            "choices": choices,
            "usage": _usage(prompt_total, completion_total),
        }

    def completion_chunks(self, r: CompletionRequest) -> Iterator[str]:
        runs = self.completion_runs(r)
        usage_on = bool(r.stream_options and r.stream_options.include_usage)
        base = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": r.model,
        }

        def chunk(index: int, text: str, finish: str | None = None, logprobs=None) -> str:
            choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
            extra = {"usage": None} if usage_on else {}
            return _sse({**base, "choices": [choice], **extra})

        prompt, replies = runs[0]
        try:  # a failure before the first token is an HTTP error
            first = next(iter(replies), None)
        except RpcError as err:
            raise from_rpc(err, prompt_field="prompt") from None
        runs[0] = (prompt, itertools.chain([first] if first else [], replies))
        yield ""
        prompt_total = completion_total = 0
        try:
            for k, (prompt, replies) in enumerate(runs):
                offsets = [len(prompt) if r.echo else 0] * r.n
                if r.echo:
                    for j in range(r.n):
                        yield chunk(k * r.n + j, prompt)
                for reply in replies:
                    j = reply.sequence_index
                    if reply.HasField("tokens"):
                        t = reply.tokens
                        logprobs = None
                        if r.logprobs is not None:
                            logprobs = legacy_logprobs(
                                list(t.logprobs), list(t.details), offsets[j]
                            )
                            offsets[j] += sum(len(d.token) for d in t.details)
                        if t.text or logprobs:
                            yield chunk(k * r.n + j, t.text, None, logprobs)
                    else:
                        prompt_total += reply.finished.prompt_tokens if j == 0 else 0
                        completion_total += reply.finished.completion_tokens
                        finish = FINISH.get(reply.finished.finish_reason, "stop")
                        yield chunk(k * r.n + j, "", finish)
            if usage_on:
                yield _sse({**base, "choices": [], "usage": _usage(prompt_total, completion_total)})
        except RpcError as err:
            error = {"message": err.message, "type": "api_error", "param": None, "code": None}
            yield _sse({"error": error})
        yield "data: [DONE]\n\n"


def _add(seq: Sequence, tokens: rollout_pb2.TokenDelta) -> None:
    seq.text += tokens.text
    seq.token_ids.extend(tokens.token_ids)
    seq.logprobs.extend(tokens.logprobs)
    seq.details.extend(tokens.details)


def _streamed(body: Iterator[str]) -> StreamingResponse:
    """Runs the body to its first (empty) item first, so that request errors and a failure
    before the first token are HTTP errors, not a broken stream."""
    next(body)
    return StreamingResponse(body, media_type="text/event-stream")


def create_app(
    client: Client,
    base_model_path: str,
    api_key: str = "",
    tool_format: str = "",
    template: str = "",
    bases: Seq[Base] = (),
) -> FastAPI:
    """The FastAPI app; ``api_key`` (when set) is required as ``Authorization: Bearer <key>``;
    ``template`` is the data-service chat template conversations are rendered with (empty: the
    tokenizer's own); model output is parsed for tool calls in ``tool_format``, or the template's
    when that is empty (neither: requests with tools are refused unless tool_choice is 'none').
    ``bases``: the cluster's other base models, each with a client of its rollout service."""
    gateway = Gateway(client, base_model_path, tool_format, template, bases)
    app = FastAPI(title="llamafleet OpenAI-compatible API")
    app.state.gateway = gateway

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
        return validation_error(exc).response()

    @app.exception_handler(RpcError)
    async def rpc_error(_: Request, exc: RpcError) -> JSONResponse:
        return from_rpc(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return ApiError(404, f"Invalid URL ({where})", None, "unknown_url").response()
        if exc.status_code == 405:
            return ApiError(
                405, f"Method not allowed ({where})", None, "method_not_allowed"
            ).response()
        return ApiError(exc.status_code, str(exc.detail)).response()

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": gateway.models()}

    @app.get("/v1/models/{model_id}")
    def get_model(model_id: str) -> dict[str, Any]:
        return gateway.model(model_id)

    @app.post("/v1/chat/completions")
    def chat_completions(request: ChatCompletionRequest):
        if request.stream:
            return _streamed(gateway.chat_chunks(request))
        return gateway.chat(request)

    @app.post("/v1/completions")
    def completions(request: CompletionRequest):
        if request.stream:
            return _streamed(gateway.completion_chunks(request))
        return gateway.completion(request)

    return app
