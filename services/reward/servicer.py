"""proto <-> domain translation for ``llamafleet.reward.v1.RewardService``.

The RPCs are implemented by the issues that build this service; an RPC not implemented here is
answered by the generated base class, which the server maps to UNIMPLEMENTED (never a fake
result).
"""

from __future__ import annotations

from llamafleet.reward.v1 import reward_service_pb2_grpc

from services.reward.config import RewardConfig


class RewardServicer(reward_service_pb2_grpc.RewardServiceServicer):
    def __init__(self, config: RewardConfig) -> None:
        self.config = config
