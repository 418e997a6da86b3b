"""The OpenAI API's request side, in OpenAI's shape: the request bodies as OpenAI validates them
(pydantic models with its bounds), and errors as OpenAI returns them (``ApiError``: status,
message, type, ``param`` as a field path), including the mapping of a service's gRPC error and
field violation onto the OpenAI field it came from. ``openai_api`` does the translation to and
from the services; this module knows nothing of them beyond the gRPC status codes.
"""

from __future__ import annotations

from typing import Any, Literal

import grpc
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llamafleet.client import RpcError

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 400,  # a parameter this deployment cannot honour
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
MAX_STOP = 4  # OpenAI's limit on stop sequences
BAD_JSON = (
    "We could not parse the JSON body of your request. The API expects a JSON payload, but what "
    "was sent was not valid JSON."
)


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchema(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"]
    function: FunctionName


class SampledRequest(_Body):
    """The fields chat and legacy completions share, bounded as OpenAI bounds them."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        if isinstance(value, list) and len(value) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences, got {len(value)}")
        return value


class ChatMessage(BaseModel):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(SampledRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    metadata: dict[str, str] | None = None


class CompletionRequest(SampledRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for legacy completions
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=20)


# --- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = "invalid_request_error" if self.status < 500 else "api_error"
        body = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


# a service's field path -> the OpenAI field it came from (first match wins)
_RPC_PARAMS = (
    ("sampling.max_tokens", "max_tokens"),
    ("sampling.structured_output", "response_format"),
    ("sampling.", ""),  # sampling.top_p -> top_p
    ("record.tools", "tools"),
    ("record", "messages"),
    ("prompt_ids", "messages"),
    ("prompt_text", "prompt"),
    ("adapter", "model"),
    ("text", "messages"),
)


def rpc_param(
    field_path: str,
    prompt_field: str = "messages",
    max_tokens: str = "max_tokens",
    structured: str = "response_format",
):
    """The OpenAI field a service's field path came from; ``structured``: the one that asked
    for constrained output (``response_format``, or ``tool_choice`` forcing a call)."""
    for prefix, param in _RPC_PARAMS:
        if field_path.startswith(prefix):
            if param == "response_format":
                return structured
            if prefix == "sampling.":
                return field_path[len(prefix) :].split(".")[0].split("[")[0]
            if param == "messages":
                return prompt_field
            if param == "max_tokens":
                return max_tokens
            return param
    return None


def from_rpc(err: RpcError, param: str | None = None, **names: str) -> ApiError:
    detail = err.message + "".join(f"; {f}: {d}" for f, d in err.violations)
    if param is None and err.violations:
        param = rpc_param(err.violations[0][0], **names)
        if param == "tool_choice":
            detail = (
                "tool_choice 'required' or a named function needs constrained decoding: " + detail
            )
    return ApiError(HTTP_STATUS.get(err.code, 500), detail, param, err.reason.lower() or None)


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid" or not loc or not isinstance(loc[0], str):
        if kind == "json_invalid":
            return ApiError(400, BAD_JSON, None, "invalid_json")
        return ApiError(400, f"invalid request body: {first.get('msg', '')}", None)
    param = ""
    for part in loc:  # OpenAI's paths: messages[0].role
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or part[:1].isupper():
            continue  # pydantic's names of union members (str, list[int], NamedToolChoice)
        else:
            param += f".{part}" if param else part
    if kind == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param)
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param)
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return ApiError(400, f"Invalid '{param}': {message}{shown}.", param, "invalid_value")
