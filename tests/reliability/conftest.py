"""Fixtures of the reliability suite: a queue client on the test Redis, worker fleets that are
always torn down, and service processes started the way ``llamafleet up`` starts them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from reliability_harness import Fleet, ServiceProc, stop_services

from services.common.queues import connect


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    yield client
    client.close()


@pytest.fixture
def fleets(tmp_path) -> Iterator[list[Fleet]]:
    """Fleets a test creates are appended here and stopped whatever happens."""
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.stop()


@pytest.fixture
def procs() -> Iterator[list[ServiceProc]]:
    """Service processes a test starts are appended here and stopped whatever happens."""
    started: list[ServiceProc] = []
    yield started
    stop_services(started)
