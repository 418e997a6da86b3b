"""The shared server: health and drain, error mapping with google.rpc details, auth, limits, TLS.

A test servicer (over the real DataService contract) raises on purpose; every check goes through
a real grpc.aio server on a loopback port and a real client channel.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from llamafleet.data.v1 import data_service_pb2 as pb
from llamafleet.data.v1 import data_service_pb2_grpc as pb_grpc

from services.common import errors
from services.common.config import ServerConfig
from services.common.server import ServiceHost, register_servicer

SERVICE = pb.DESCRIPTOR.services_by_name["DataService"].full_name
SECRET = "internal detail that must not leak"


class ProbeServicer(pb_grpc.DataServiceServicer):
    """GetDataset misbehaves on request; ListDatasets is slow; StreamBatches fails midway."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.slow_s = 0.0

    async def GetDataset(self, request, context):
        if self.mode == "bug":
            raise RuntimeError(SECRET)
        if self.mode == "invalid":
            raise errors.InvalidArgument(
                "dataset name is bad",
                reason="BAD_DATASET_NAME",
                violations=[errors.FieldViolation("name", "must not contain '/'")],
            )
        if self.mode == "missing":
            raise errors.NotFound("no dataset 'x'", reason="DATASET_NOT_FOUND")
        return pb.GetDatasetResponse()

    async def ListDatasets(self, request, context):
        await asyncio.sleep(self.slow_s)
        return pb.ListDatasetsResponse()

    async def StreamBatches(self, request, context):
        yield pb.StreamBatchesResponse()
        raise errors.NotFound("dataset vanished", reason="DATASET_NOT_FOUND")


def _config(**kw) -> ServerConfig:
    base = ServerConfig(host="127.0.0.1", port=0, shutdown_delay_s=0.3, grace_s=1.0)
    return replace(base, **kw)


async def _start(servicer: ProbeServicer, **kw) -> ServiceHost:
    host = ServiceHost(
        "probe",
        _config(**kw),
        register_servicer(pb_grpc.add_DataServiceServicer_to_server, servicer, SERVICE),
    )
    await host.start()
    return host


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def test_health_serving_then_not_serving_during_graceful_stop():
    async def scenario():
        host = await _start(ProbeServicer())
        async with grpc.aio.insecure_channel(host.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICE):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stopping = asyncio.create_task(host.stop())
            await asyncio.sleep(0.1)  # inside shutdown_delay_s: still answering, but draining
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # in-flight and new calls still work while draining
            await pb_grpc.DataServiceStub(channel).ListDatasets(pb.ListDatasetsRequest(), timeout=5)
            await stopping
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    _run(scenario())


def test_malformed_body_is_invalid_argument_and_service_keeps_serving():
    async def scenario():
        host = await _start(ProbeServicer())
        async with grpc.aio.insecure_channel(host.address) as channel:
            raw = channel.unary_unary(f"/{SERVICE}/GetDataset")  # no serializer: raw bytes
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff\xff\xff\xff\x0f", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid" in err.value.details()
            assert "DecodeError" not in err.value.details()
            info = error_details_pb2.ErrorInfo()
            assert rpc_status.from_call(err.value).details[0].Unpack(info)
            assert info.reason == "UNDECODABLE_REQUEST" and info.domain == "llamafleet.dev"
            stub = pb_grpc.DataServiceStub(channel)
            await stub.GetDataset(pb.GetDatasetRequest(), timeout=5)
        await host.stop(grace=0)

    _run(scenario())


def test_unexpected_exception_is_internal_without_stack_text(caplog):
    async def scenario():
        servicer = ProbeServicer()
        servicer.mode = "bug"
        host = await _start(servicer)
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.DataServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetDataset(
                    pb.GetDatasetRequest(), timeout=5, metadata=[("x-request-id", "req-42")]
                )
        await host.stop(grace=0)
        return err.value

    error = _run(scenario())
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "req-42" in error.details()
    assert SECRET not in error.details() and "Traceback" not in error.details()
    assert SECRET not in str(error.trailing_metadata())
    assert any(SECRET in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_project_errors_carry_google_rpc_details():
    async def scenario():
        servicer = ProbeServicer()
        host = await _start(servicer)
        results = {}
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.DataServiceStub(channel)
            for mode in ("invalid", "missing"):
                servicer.mode = mode
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetDataset(pb.GetDatasetRequest(), timeout=5)
                results[mode] = err.value
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for batch in stub.StreamBatches(pb.StreamBatchesRequest(), timeout=5):
                    received.append(batch)
            results["stream"] = err.value
            assert len(received) == 1
        await host.stop(grace=0)
        return results

    results = _run(scenario())
    invalid = results["invalid"]
    assert invalid.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(invalid)
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info) and info.reason == "BAD_DATASET_NAME"
    assert status.details[1].Unpack(bad)
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("name", "must not contain '/'")
    ]
    assert results["missing"].code() == grpc.StatusCode.NOT_FOUND
    assert results["stream"].code() == grpc.StatusCode.NOT_FOUND


def test_unimplemented_rpc_answers_unimplemented():
    async def scenario():
        host = await _start(ProbeServicer())
        async with grpc.aio.insecure_channel(host.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.DataServiceStub(channel).PrepareDataset(
                    pb.PrepareDatasetRequest(), timeout=5
                )
        await host.stop(grace=0)
        return err.value

    assert _run(scenario()).code() == grpc.StatusCode.UNIMPLEMENTED


def test_bearer_token_required_except_for_health():
    async def scenario():
        host = await _start(ProbeServicer(), auth_token="s3cret")
        codes = {}
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.DataServiceStub(channel)
            for label, metadata in [
                ("none", None),
                ("wrong", [("authorization", "Bearer nope")]),
                ("scheme", [("authorization", "s3cret")]),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetDataset(pb.GetDatasetRequest(), timeout=5, metadata=metadata)
                codes[label] = err.value.code()
            # streaming RPCs are guarded too
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in stub.StreamBatches(pb.StreamBatchesRequest(), timeout=5):
                    pass
            codes["stream"] = err.value.code()
            # RFC 6750: the scheme is case-insensitive
            for scheme in ("Bearer", "bearer", "BEARER"):
                await stub.GetDataset(
                    pb.GetDatasetRequest(),
                    timeout=5,
                    metadata=[("authorization", f"{scheme} s3cret")],
                )
            for label, value in [("other scheme", "Basic s3cret"), ("prefix", "Bearer s3cre")]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.GetDataset(
                        pb.GetDatasetRequest(), timeout=5, metadata=[("authorization", value)]
                    )
                codes[label] = err.value.code()
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await host.stop(grace=0)
        return codes

    codes = _run(scenario())
    assert set(codes.values()) == {grpc.StatusCode.UNAUTHENTICATED}


def test_read_token_reaches_only_the_rpcs_that_read():
    """A second, read-only token: Get/List/Stream pass, Prepare (which writes) is
    PERMISSION_DENIED; the admin token still reaches everything."""

    async def scenario():
        host = await _start(ProbeServicer(), auth_token="admin-1", read_token="reader-2")
        codes = {}
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.DataServiceStub(channel)
            reader = [("authorization", "Bearer reader-2")]
            admin = [("authorization", "bearer admin-1")]
            await stub.GetDataset(pb.GetDatasetRequest(), timeout=5, metadata=reader)
            await stub.ListDatasets(pb.ListDatasetsRequest(), timeout=5, metadata=reader)
            for label, metadata in (("reader", reader), ("admin", admin)):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.PrepareDataset(
                        pb.PrepareDatasetRequest(), timeout=5, metadata=metadata
                    )
                codes[label] = err.value
        await host.stop(grace=0)
        return codes

    codes = _run(scenario())
    assert codes["reader"].code() == grpc.StatusCode.PERMISSION_DENIED
    assert "admin token" in codes["reader"].details()
    # the admin token gets through the guard (the probe does not implement PrepareDataset)
    assert codes["admin"].code() == grpc.StatusCode.UNIMPLEMENTED
    from services.common.server import is_read_only

    writes = {"CreateTrainingJob", "CancelTrainingJob", "ExportModel", "LoadAdapter"}
    assert not any(is_read_only(f"/x.Svc/{m}") for m in writes | {"PrepareDataset"})
    reads = {"GetTrainingJob", "ListTrainingJobs", "WatchTrainingJob", "Generate", "ScoreRollouts"}
    assert all(is_read_only(f"/x.Svc/{m}") for m in reads)


def test_concurrency_limit_answers_resource_exhausted():
    async def scenario():
        servicer = ProbeServicer()
        servicer.slow_s = 0.5
        host = await _start(servicer, max_concurrent_rpcs=2)
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = pb_grpc.DataServiceStub(channel)
            calls = [stub.ListDatasets(pb.ListDatasetsRequest(), timeout=10) for _ in range(5)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await host.stop(grace=0)
        return outcomes

    outcomes = _run(scenario())
    rejected = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(rejected) == 3
    assert {o.code() for o in rejected} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


def test_reflection_lists_the_services():
    async def scenario():
        host = await _start(ProbeServicer())
        async with grpc.aio.insecure_channel(host.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request]), timeout=5):
                names = {s.name for s in reply.list_services_response.service}
                break
        await host.stop(grace=0)
        return names

    names = _run(scenario())
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_reflection_v1_beside_v1alpha():
    """grpc.reflection.v1 (what grpcurl and newer clients ask first) answers like v1alpha, and
    describes itself. The v1 messages are v1alpha's under another package: same bytes."""
    from google.protobuf import descriptor_pb2

    async def scenario():
        host = await _start(ProbeServicer())
        replies = {}
        async with grpc.aio.insecure_channel(host.address) as channel:
            call = channel.stream_stream(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
            )
            requests = [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol="grpc.reflection.v1.ServerReflection"
                ),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE),
            ]
            async for reply in call(iter(requests), timeout=5):
                replies[
                    reply.original_request.WhichOneof("message_request") + str(len(replies))
                ] = reply
        await host.stop(grace=0)
        return list(replies.values())

    listed, v1_file, service_file = _run(scenario())
    names = {s.name for s in listed.list_services_response.service}
    assert {SERVICE, "grpc.reflection.v1.ServerReflection"} <= names
    assert "grpc.reflection.v1alpha.ServerReflection" in names
    proto = descriptor_pb2.FileDescriptorProto.FromString(
        v1_file.file_descriptor_response.file_descriptor_proto[0]
    )
    assert proto.package == "grpc.reflection.v1"
    assert proto.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert service_file.file_descriptor_response.file_descriptor_proto


def test_oversized_error_details_are_capped_so_the_real_code_arrives():
    """A 4 KB bad value quoted in a message and in many violations would make trailers past
    gRPC's 8 KiB metadata limit (the client then sees RESOURCE_EXHAUSTED): capped at the source."""
    huge = "x" * 4096
    error = errors.InvalidArgument(
        f"bad id {huge}",
        reason="BAD",
        violations=[errors.FieldViolation(f"f{i}.{huge}", huge) for i in range(50)],
        metadata={"value": huge},
    )
    status = errors.to_rpc_status(error)
    assert len(status.SerializeToString()) < 4096
    assert status.message.startswith("bad id xxx") and "characters)" in status.message
    bad = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad)
    assert "more not shown" in bad.field_violations[-1].description
    assert errors.shorten(huge) == repr("x" * 48) + "... (4096 characters)"


def test_port_cannot_be_shared_with_another_server():
    async def scenario():
        first = await _start(ProbeServicer())
        with pytest.raises((OSError, RuntimeError)):
            await _start(ProbeServicer(), port=first.port)
        await first.stop(grace=0)

    _run(scenario())


def test_address_file_written_once_serving(tmp_path):
    async def scenario():
        host = await _start(ProbeServicer(), address_file=str(tmp_path / "probe.addr"))
        text = (tmp_path / "probe.addr").read_text()
        await host.stop(grace=0)
        return host, text

    host, text = _run(scenario())
    assert text == host.address


def _make_certs(directory: Path) -> dict[str, Path]:
    """A CA, a server cert for 127.0.0.1 and a client cert, all signed by the CA (openssl)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", f"{name}.pem")  # fmt: skip
    return {
        n: directory / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


def test_tls_and_mutual_tls(tmp_path):
    certs = _make_certs(tmp_path)
    ca = certs["ca.pem"].read_bytes()

    async def scenario():
        host = await _start(
            ProbeServicer(),
            tls_cert=str(certs["server.pem"]),
            tls_key=str(certs["server.key"]),
            tls_client_ca=str(certs["ca.pem"]),
        )
        with_client_cert = grpc.ssl_channel_credentials(
            ca, certs["client.key"].read_bytes(), certs["client.pem"].read_bytes()
        )
        async with grpc.aio.secure_channel(host.address, with_client_cert) as channel:
            await pb_grpc.DataServiceStub(channel).GetDataset(pb.GetDatasetRequest(), timeout=5)
        without = grpc.ssl_channel_credentials(ca)
        async with grpc.aio.secure_channel(host.address, without) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_grpc.DataServiceStub(channel).GetDataset(pb.GetDatasetRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(host.address) as channel:  # plaintext refused
            with pytest.raises(grpc.aio.AioRpcError):
                await pb_grpc.DataServiceStub(channel).GetDataset(pb.GetDatasetRequest(), timeout=2)
        await host.stop(grace=0)

    _run(scenario())
