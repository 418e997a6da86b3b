"""Shared fixtures: a real ``redis-server`` on a free port, started per test that asks for it.

Tests that kill and restart Redis take ``local_redis`` (the process handle); the rest take
``redis_url``.
"""

from __future__ import annotations

import pytest
from llamafleet.redis_local import LocalRedis, free_port


@pytest.fixture
def local_redis(tmp_path):
    server = LocalRedis(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(local_redis) -> str:
    return local_redis.url
