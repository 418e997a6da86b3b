"""proto <-> domain translation for ``llamafleet.data.v1.DataService``.

The RPCs are implemented by the issues that build this service; an RPC not implemented here is
answered by the generated base class, which the server maps to UNIMPLEMENTED (never a fake
result).
"""

from __future__ import annotations

from llamafleet.data.v1 import data_service_pb2_grpc

from services.data.config import DataConfig


class DataServicer(data_service_pb2_grpc.DataServiceServicer):
    def __init__(self, config: DataConfig) -> None:
        self.config = config
