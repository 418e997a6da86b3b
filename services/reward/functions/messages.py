"""Reward-function domain types <-> ``llamafleet.reward.v1`` messages (for the servicer and the
worker, which both publish components)."""

from __future__ import annotations

from collections.abc import Iterable

from llamafleet.reward.v1 import reward_pb2, reward_service_pb2

from services.reward.functions import Component
from services.reward.functions.registry import FunctionSpec, Kind

KINDS = {
    Kind.RULE: reward_service_pb2.REWARD_FUNCTION_KIND_RULE,
    Kind.BUILTIN: reward_service_pb2.REWARD_FUNCTION_KIND_BUILTIN,
    Kind.USER: reward_service_pb2.REWARD_FUNCTION_KIND_USER,
    Kind.SANDBOX: reward_service_pb2.REWARD_FUNCTION_KIND_SANDBOX,
    Kind.REMOTE: reward_service_pb2.REWARD_FUNCTION_KIND_REMOTE,
}


def component_pb(c: Component) -> reward_pb2.RewardComponent:
    return reward_pb2.RewardComponent(
        label=c.label, name=c.name, weight=c.weight, score=c.score,
        sub_scores=c.sub_scores, detail=c.detail,
    )  # fmt: skip


def components_pb(components: Iterable[Component]) -> list[reward_pb2.RewardComponent]:
    return [component_pb(c) for c in components]


def info_pb(
    spec: FunctionSpec, timeout_s: float, unavailable: str
) -> reward_service_pb2.RewardFunctionInfo:
    info = reward_service_pb2.RewardFunctionInfo(
        name=spec.name, kind=KINDS[spec.kind], description=spec.description, source=spec.source,
        available=not unavailable, unavailable_reason=unavailable,
    )  # fmt: skip
    info.timeout.FromNanoseconds(int(timeout_s * 1e9))
    return info
