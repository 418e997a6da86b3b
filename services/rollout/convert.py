"""Proto <-> domain tables of the rollout service, shared by the servicer and the queue worker:
sampling parameters filled and checked (``sampling_from_proto``: every violation named by its
field path), finish reasons, and a resident adapter as a ``LoadedAdapter``. No I/O, no engine.
"""

from __future__ import annotations

import json
import math

from google.protobuf import timestamp_pb2
from llamafleet.rollout.v1 import rollout_pb2

from services.common.errors import FieldViolation, InvalidArgument, shorten
from services.rollout.adapters import Resident
from services.rollout.engines import FinishReason, Sampling, TokenDelta

FINISH_REASONS = {
    FinishReason.STOP: rollout_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: rollout_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: rollout_pb2.FINISH_REASON_ABORT,
}


def loaded_adapter(entry: Resident) -> rollout_pb2.LoadedAdapter:
    load_time, last_used = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    load_time.FromNanoseconds(int(entry.load_time * 1e9))
    last_used.FromNanoseconds(int(entry.last_used_time * 1e9))
    return rollout_pb2.LoadedAdapter(
        adapter=entry.ref,
        sha256=entry.sha256,
        size_bytes=entry.size_bytes,
        load_time=load_time,
        last_used_time=last_used,
    )


MAX_TOP_LOGPROBS = 20  # OpenAI's bound, and vLLM's default max_logprobs
_MAX_STOP_STRINGS = 16
_MAX_STOP_CHARS = 1024
_MAX_STOP_TOKEN_IDS = 1024


def sampling_from_proto(
    params: rollout_pb2.SamplingParams,
    *,
    default_max_tokens: int,
    max_tokens_limit: int,
    max_n: int = 1,
    field_path: str = "sampling",
) -> Sampling:
    """Fill the proto's defaults and check every value; all violations are reported at once."""
    bad: list[FieldViolation] = []

    def check(ok: bool, name: str, description: str) -> None:
        if not ok:
            bad.append(FieldViolation(f"{field_path}.{name}", description))

    p = params
    temperature = p.temperature if p.HasField("temperature") else 1.0
    top_p = p.top_p if p.HasField("top_p") else 1.0
    top_k = p.top_k if p.HasField("top_k") else 0
    max_tokens = p.max_tokens if p.HasField("max_tokens") else default_max_tokens
    n = p.n if p.HasField("n") else 1
    penalty = p.repetition_penalty if p.HasField("repetition_penalty") else 1.0
    check(math.isfinite(temperature) and temperature >= 0, "temperature", "must be >= 0")
    check(math.isfinite(top_p) and 0 < top_p <= 1, "top_p", "must be in (0, 1]")
    check(top_k >= 0, "top_k", "must be >= 0 (0 = no limit)")
    check(
        0 < max_tokens <= max_tokens_limit,
        "max_tokens",
        f"must be in 1..{max_tokens_limit} (the service's max_tokens_limit)",
    )
    check(1 <= n <= max_n, "n", f"must be in 1..{max_n}")
    check(math.isfinite(penalty) and penalty > 0, "repetition_penalty", "must be > 0")
    check(len(p.stop) <= _MAX_STOP_STRINGS, "stop", f"at most {_MAX_STOP_STRINGS} strings")
    check(all(p.stop), "stop", "stop strings must not be empty")
    check(
        all(len(x) <= _MAX_STOP_CHARS for x in p.stop),
        "stop",
        f"a stop string has at most {_MAX_STOP_CHARS} characters",
    )
    check(
        len(p.stop_token_ids) <= _MAX_STOP_TOKEN_IDS,
        "stop_token_ids",
        f"at most {_MAX_STOP_TOKEN_IDS} ids",
    )
    check(all(t >= 0 for t in p.stop_token_ids), "stop_token_ids", "token ids are >= 0")
    top_logprobs = p.top_logprobs if p.HasField("top_logprobs") else None
    check(
        top_logprobs is None or 0 <= top_logprobs <= MAX_TOP_LOGPROBS,
        "top_logprobs",
        f"must be in 0..{MAX_TOP_LOGPROBS}",
    )
    kind = p.structured_output.WhichOneof("kind") if p.HasField("structured_output") else None
    json_schema = p.structured_output.json_schema if kind == "json_schema" else None
    if json_schema is not None:
        try:
            schema = json.loads(json_schema)
        except ValueError as exc:
            schema = exc
        check(
            isinstance(schema, dict),
            "structured_output.json_schema",
            f"must be a JSON Schema object as JSON text ({shorten(schema)})",
        )
    check(
        kind != "json_object" or p.structured_output.json_object,
        "structured_output.json_object",
        "must be true when set",
    )
    if bad:
        raise InvalidArgument("invalid sampling parameters", reason="BAD_SAMPLING", violations=bad)
    return Sampling(
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        max_tokens=int(max_tokens),
        stop=tuple(p.stop),
        stop_token_ids=tuple(int(t) for t in p.stop_token_ids),
        seed=int(p.seed) if p.HasField("seed") else None,
        n=int(n),
        repetition_penalty=float(penalty),
        top_logprobs=None if top_logprobs is None else int(top_logprobs),
        json_schema=json_schema,
        json_object=kind == "json_object",
    )


def token_details(engine, delta: TokenDelta) -> list[rollout_pb2.TokenDetail]:
    """Each new token's text and its top alternatives (``Sampling.top_logprobs``) as protos."""
    out = []
    for k, token_id in enumerate(delta.token_ids):
        text = _token_text(engine, token_id)
        detail = rollout_pb2.TokenDetail(token=text, token_bytes=text.encode())
        for alt_id, logprob in delta.top[k] if k < len(delta.top) else ():
            alt = _token_text(engine, alt_id)
            detail.top.append(
                rollout_pb2.TopLogprob(
                    token_id=alt_id, token=alt, token_bytes=alt.encode(), logprob=logprob
                )
            )
        out.append(detail)
    return out


def _token_text(engine, token_id: int) -> str:
    return engine.tokenizer.decode([token_id], skip_special_tokens=False)
