"""proto <-> domain translation for ``llamafleet.training.v1.TrainingService``.

The RPCs are implemented by the issues that build this service; an RPC not implemented here is
answered by the generated base class, which the server maps to UNIMPLEMENTED (never a fake
result).
"""

from __future__ import annotations

from llamafleet.training.v1 import training_service_pb2_grpc

from services.training.config import TrainingConfig


class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
