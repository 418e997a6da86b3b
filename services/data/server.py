"""Assembles the data service on the shared ``ServiceHost``.

The tokenizer library (transformers, which imports torch) is imported here, before the server
serves: importing it loads shared libraries for seconds while holding the GIL, which would stall
health checks if the first request that needs a tokenizer did it.
"""

from __future__ import annotations

from llamafleet.data.v1 import data_service_pb2, data_service_pb2_grpc

from services.common.server import Register, register_servicer
from services.data.config import DataConfig
from services.data.servicer import DataServicer

SERVICE_NAME = data_service_pb2.DESCRIPTOR.services_by_name["DataService"].full_name


def make_register(config: DataConfig) -> Register:
    # see the module docstring; transformers imports lazily, so name what loading one needs
    from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401
    from transformers.models.auto import tokenization_auto  # noqa: F401

    return register_servicer(
        data_service_pb2_grpc.add_DataServiceServicer_to_server, DataServicer(config), SERVICE_NAME
    )
