"""proto <-> domain translation for ``llamafleet.reward.v1.RewardService``.

Everything else (scorer table, batching, normalisation) is in ``scoring.py``.
"""

from __future__ import annotations

import asyncio

from llamafleet.reward.v1 import reward_pb2, reward_service_pb2, reward_service_pb2_grpc

from services.common.errors import invalid
from services.common.limits import Limits, check_id, check_length, check_name
from services.reward.config import RewardConfig
from services.reward.functions.messages import components_pb, info_pb
from services.reward.scorers import ScoreInput
from services.reward.scoring import ScoringEngine, adapter_key

MAX_ITEMS = 4096


def item_from_proto(item: reward_pb2.ScoreItem) -> ScoreInput:
    return ScoreInput(
        item_id=item.item_id,
        prompt_ids=tuple(item.prompt_ids),
        completion_ids=tuple(item.completion_ids),
        prompt_text=item.prompt_text,
        completion_text=item.completion_text,
        reference_answer=item.reference_answer,
    )


def check_sizes(request: reward_service_pb2.ScoreRolloutsRequest, config: RewardConfig) -> None:
    """The request's strings within the service's bounds (``limits.py``), before any work."""
    limits = Limits.of(config)
    check_name(request.scorer, "scorer", limits)
    check_id(request.job_id, "job_id", limits)
    for i, item in enumerate(request.items):
        check_item(item, f"items[{i}]", config)


def check_item(item: reward_pb2.ScoreItem, field: str, config: RewardConfig) -> None:
    """One item's id, texts (``max_item_chars``) and token lists (``max_seq_len``)."""
    check_id(item.item_id, f"{field}.item_id", Limits.of(config))
    for name in ("prompt_text", "completion_text", "reference_answer"):
        check_length(
            getattr(item, name), f"{field}.{name}", config.max_item_chars, "max_item_chars"
        )
    for name in ("prompt_ids", "completion_ids"):
        if len(getattr(item, name)) > config.max_seq_len:
            raise invalid(
                f"{field}.{name}",
                f"{len(getattr(item, name))} tokens, more than max_seq_len={config.max_seq_len}",
            )


class RewardServicer(reward_service_pb2_grpc.RewardServiceServicer):
    def __init__(self, engine: ScoringEngine) -> None:
        self.engine = engine

    async def ScoreRollouts(self, request, context):
        if len(request.items) > MAX_ITEMS:
            raise invalid(
                "items", f"{len(request.items)} items in one request; send at most {MAX_ITEMS}"
            )
        check_sizes(request, self.engine.config)
        adapter = adapter_key(
            request.reward_adapter.id, request.reward_adapter.version, "reward_adapter"
        )
        items = [item_from_proto(item) for item in request.items]
        override = None
        if request.HasField("reward_settings"):
            override = self.engine.settings_from(request.reward_settings, "reward_settings")
        calls = self.engine.function_calls(
            request.scorer, request.reward_settings.functions, "reward_settings.functions"
        )
        scored = await self.engine.score_async(
            request.scorer, request.job_id, adapter, items, override, calls
        )
        components = scored.components or [()] * len(items)
        return reward_service_pb2.ScoreRolloutsResponse(
            scorer=scored.scorer,
            scores=[
                reward_pb2.Score(
                    item_id=item.item_id, raw_score=raw, normalized_score=norm,
                    components=components_pb(parts),
                )
                for item, raw, norm, parts in zip(
                    items, scored.raw, scored.normalized, components, strict=True
                )
            ],
        )  # fmt: skip

    async def ListRewardFunctions(self, request, context):
        functions = self.engine.functions
        infos = []
        for spec in functions.specs():
            unavailable = await asyncio.to_thread(functions.unavailable_reason, spec)
            infos.append(info_pb(spec, functions.timeout_s(spec), unavailable))
        return reward_service_pb2.ListRewardFunctionsResponse(functions=infos)

    async def TestRewardFunction(self, request, context):
        if not request.HasField("item"):
            raise invalid("item", "required: the prompt and completion to score")
        check_item(request.item, "item", self.engine.config)
        score, parts = await self.engine.test_functions(
            request.functions, item_from_proto(request.item)
        )
        return reward_service_pb2.TestRewardFunctionResponse(
            score=score, components=components_pb(parts)
        )
