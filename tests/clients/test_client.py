"""The Python client: deadlines, token, typed errors with google.rpc details, UNAVAILABLE retries."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from llamafleet.client import Client, RpcError
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc as pb_grpc

from services.common import errors
from services.common.config import ServerConfig
from services.common.server import ServiceHost, register_servicer

SERVICE = pb.DESCRIPTOR.services_by_name["DataService"].full_name


class Probe(pb_grpc.DataServiceServicer):
    def __init__(self) -> None:
        self.calls = 0
        self.metadata: list[dict] = []  # the invocation metadata of each GetDataset

    async def GetDataset(self, request, context):
        self.calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if request.dataset_id == "flaky" and self.calls == 1:
            raise errors.Unavailable("not yet", reason="WARMING_UP")
        if request.dataset_id == "bad":
            raise errors.invalid("dataset_id", "must not be 'bad'")
        if request.dataset_id == "slow":
            await asyncio.sleep(2)
        return pb.GetDatasetResponse()

    async def StreamBatches(self, request, context):
        for i in range(3):
            yield pb.StreamBatchesResponse(cursor=str(i))


@pytest.fixture
def server():
    """A real server on an event loop in a background thread; yields (address, servicer)."""
    probe = Probe()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    host = ServiceHost(
        "probe",
        ServerConfig(auth_token="tok", shutdown_delay_s=0, grace_s=0),
        register_servicer(pb_grpc.add_DataServiceServicer_to_server, probe, SERVICE),
    )
    asyncio.run_coroutine_threadsafe(host.start(), loop).result(10)
    yield host.address, probe
    asyncio.run_coroutine_threadsafe(host.stop(grace=0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_calls_carry_the_token_and_errors_are_typed(server):
    address, _ = server
    with Client({"data": address}, token="tok") as client:
        client.data.GetDataset(pb.GetDatasetRequest(dataset_id="ok"))
        assert [r.cursor for r in client.data.StreamBatches(pb.StreamBatchesRequest())] == [
            "0",
            "1",
            "2",
        ]
        with pytest.raises(RpcError) as err:
            client.data.GetDataset(pb.GetDatasetRequest(dataset_id="bad"))
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.reason == "INVALID_ARGUMENT"
    assert err.value.violations == [("dataset_id", "must not be 'bad'")]
    assert "data.GetDataset" in str(err.value)

    with Client({"data": address}) as anonymous, pytest.raises(RpcError) as err:
        anonymous.data.GetDataset(pb.GetDatasetRequest())
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_every_call_has_a_deadline(server):
    address, _ = server
    with Client({"data": address}, token="tok", timeout=0.3) as client:
        with pytest.raises(RpcError) as err:
            client.data.GetDataset(pb.GetDatasetRequest(dataset_id="slow"))
    assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_unavailable_is_retried_only_for_idempotent_rpcs(monkeypatch):
    port = __import__("llamafleet.redis_local", fromlist=["free_port"]).free_port()
    with Client({"data": f"127.0.0.1:{port}"}, timeout=1, retries=2) as client:
        sleeps = []
        monkeypatch.setattr("llamafleet.client.time.sleep", sleeps.append)
        with pytest.raises(RpcError) as err:
            client.data.GetDataset(pb.GetDatasetRequest())  # idempotent: retried twice
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
        assert len(sleeps) == 2
        sleeps.clear()
        with pytest.raises(RpcError):
            client.data.PrepareDataset(pb.PrepareDatasetRequest())  # not retried
        assert sleeps == []


def test_a_retried_call_keeps_the_callers_metadata(server, monkeypatch):
    """The caller's metadata (a request id) goes with every attempt, not only the first."""
    address, probe = server
    monkeypatch.setattr("llamafleet.client.time.sleep", lambda seconds: None)
    with Client({"data": address}, token="tok") as client:
        request = pb.GetDatasetRequest(dataset_id="flaky")
        client.data.GetDataset(request, metadata=[("x-request-id", "r-1")])
    assert [m.get("x-request-id") for m in probe.metadata] == ["r-1", "r-1"]  # retried once
    assert all(m.get("authorization") == "Bearer tok" for m in probe.metadata)


def test_import_llamafleet_gives_the_client_as_the_readme_says():
    """``import llamafleet; llamafleet.Client(...)`` works; the stubs alone do not load it."""
    import subprocess
    import sys

    import llamafleet
    from llamafleet.credentials import Credentials

    assert llamafleet.Client is Client and llamafleet.RpcError is RpcError
    assert llamafleet.Credentials is Credentials
    with pytest.raises(AttributeError, match="no attribute 'Cleint'"):
        llamafleet.Cleint  # noqa: B018
    with llamafleet.Client({"data": "127.0.0.1:1"}, timeout=1) as client:
        assert client.data is not None
    check = (
        "import sys, llamafleet.data.v1.data_pb2; assert 'llamafleet.client' not in sys.modules; "
        "from llamafleet import Client; assert 'llamafleet.client' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", check], check=True)
