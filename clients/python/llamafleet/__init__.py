"""llamafleet's Python client: ``llamafleet.Client`` reaches the four services.

    import llamafleet
    client = llamafleet.Client({"data": "127.0.0.1:50051", "training": "127.0.0.1:50052"})

``Client``, ``RpcError`` (``llamafleet.client``) and ``Credentials`` (``llamafleet.credentials``)
are loaded on first use, so importing the generated stubs (``llamafleet.data.v1`` ..., which the
services do) does not load the client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llamafleet.client import Client, RpcError
    from llamafleet.credentials import Credentials

__all__ = ["Client", "Credentials", "RpcError"]

_HOMES = {"Client": "llamafleet.client", "RpcError": "llamafleet.client",
          "Credentials": "llamafleet.credentials"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'llamafleet' has no attribute {name!r}")
