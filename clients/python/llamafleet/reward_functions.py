"""The reward service's functions and scores' components as JSON-ready dicts: what
``llamafleet reward`` prints and the web UI's Rewards tab sends. Knows the messages only."""

from __future__ import annotations

from llamafleet.reward.v1 import reward_pb2
from llamafleet.reward.v1 import reward_service_pb2 as pb

KIND_NAMES = {
    pb.REWARD_FUNCTION_KIND_RULE: "rule",
    pb.REWARD_FUNCTION_KIND_BUILTIN: "builtin",
    pb.REWARD_FUNCTION_KIND_USER: "user",
    pb.REWARD_FUNCTION_KIND_SANDBOX: "sandbox",
    pb.REWARD_FUNCTION_KIND_REMOTE: "remote",
}


def function_info(info: pb.RewardFunctionInfo) -> dict:
    return {
        "name": info.name,
        "kind": KIND_NAMES.get(info.kind, "?"),
        "description": info.description,
        "source": info.source,
        "timeout_s": info.timeout.ToNanoseconds() / 1e9,
        "available": info.available,
        "unavailable_reason": info.unavailable_reason,
    }


def component(c: reward_pb2.RewardComponent) -> dict:
    return {
        "label": c.label, "name": c.name, "weight": c.weight, "score": c.score,
        "sub_scores": dict(c.sub_scores), "detail": c.detail,
    }  # fmt: skip
