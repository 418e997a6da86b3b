"""proto <-> domain translation for ``llamafleet.rollout.v1.RolloutService``.

The RPCs are implemented by the issues that build this service; an RPC not implemented here is
answered by the generated base class, which the server maps to UNIMPLEMENTED (never a fake
result).
"""

from __future__ import annotations

from llamafleet.rollout.v1 import rollout_service_pb2_grpc

from services.rollout.config import RolloutConfig


class RolloutServicer(rollout_service_pb2_grpc.RolloutServiceServicer):
    def __init__(self, config: RolloutConfig) -> None:
        self.config = config
