"""Authentication across the four real services and the queue's Redis.

The four services run as processes with a bearer token and mutual TLS (certificates from
``tls_certs``). Every RPC, enumerated from the service descriptors (so a new RPC is covered
without editing this file), is UNAUTHENTICATED without the token or with a wrong one, and is
let through with it; a Hypothesis search over request bodies and bad credentials finds no way
past. Redis with a password and with an ACL user: the queue works with the credentials in the
URL, fails clearly without them, and never prints the password.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llamafleet.data.v1 import data_service_pb2
from llamafleet.redis_local import LocalRedis, free_port
from llamafleet.reward.v1 import reward_service_pb2
from llamafleet.rollout.v1 import rollout_service_pb2
from llamafleet.training.v1 import training_service_pb2
from reliability_harness import start_service, stop_service, stop_services, wait_serving
from tls_certs import make_certs

from services.common.errors import Unavailable
from services.common.queues import (
    DEADLETTER,
    Outcome,
    RedisUnusable,
    WorkQueue,
    connect,
    publish,
    require_redis,
    stats,
    trim,
)

TOKEN = "tok-7d1f0c2a9b"
FILES = {
    "data": data_service_pb2,
    "training": training_service_pb2,
    "rollout": rollout_service_pb2,
    "reward": reward_service_pb2,
}
# (service name, service descriptor, method descriptor) for every RPC of the four services.
RPCS = [
    (name, service, method)
    for name, module in FILES.items()
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
BAD_CREDENTIALS = {
    "none": [],
    "empty": [("authorization", "")],
    "wrong": [("authorization", "Bearer wrong")],
    "no scheme": [("authorization", TOKEN)],
    "prefix": [("authorization", f"Bearer {TOKEN[:-1]}")],
    "suffix": [("authorization", f"Bearer {TOKEN}x")],
    "other key": [("x-authorization", f"Bearer {TOKEN}")],
    "wrong first": [("authorization", "Bearer wrong"), ("authorization", f"Bearer {TOKEN}")],
}


class Fleet:
    def __init__(self, addresses: dict[str, str], certs: dict[str, Path]) -> None:
        self.addresses, self.certs = addresses, certs
        ca = certs["ca.pem"].read_bytes()
        self.mtls = self.credentials("client")
        self.no_client_cert = grpc.ssl_channel_credentials(ca)
        self.rogue = self.credentials("rogue")
        self.channels = {n: grpc.secure_channel(a, self.mtls) for n, a in addresses.items()}

    def credentials(self, who: str) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.certs["ca.pem"].read_bytes(),
            self.certs[f"{who}.key"].read_bytes(),
            self.certs[f"{who}.pem"].read_bytes(),
        )

    def call(self, name: str, service, method, body: bytes, metadata, timeout: float = 20.0):
        """Call one RPC with a raw request body; returns the status code."""
        path = f"/{service.full_name}/{method.name}"
        channel = self.channels[name]
        try:
            if method.server_streaming:
                for _ in channel.unary_stream(path)(body, timeout=timeout, metadata=metadata):
                    pass
            else:
                channel.unary_unary(path)(body, timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            return err.code()
        return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("auth")
    certs = make_certs(workdir / "certs")
    tls = [
        f"auth_token={TOKEN}",
        f"tls_cert={certs['server.pem']}",
        f"tls_key={certs['server.key']}",
        f"tls_client_ca={certs['ca.pem']}",
        "shutdown_delay_s=0.1",
    ]
    procs = [start_service(name, workdir / name, *tls) for name in FILES]
    try:
        creds = Fleet({}, certs).mtls
        addresses = {svc.name: wait_serving(svc, credentials=creds) for svc in procs}
        fleet = Fleet(addresses, certs)
        yield fleet
        for channel in fleet.channels.values():
            channel.close()
    finally:
        stop_services(procs)


def test_every_rpc_of_every_service_requires_the_token(fleet):
    assert {name for name, _s, _m in RPCS} == set(FILES) and len(RPCS) >= 16
    codes = {}
    for name, service, method in RPCS:
        for label, metadata in (("none", []), ("wrong", BAD_CREDENTIALS["wrong"])):
            codes[(method.full_name, label)] = fleet.call(name, service, method, b"", metadata)
        # With the token the same empty request gets past the guard (to the service's answer).
        right = fleet.call(name, service, method, b"", [("authorization", f"Bearer {TOKEN}")])
        assert right not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE), (
            method.full_name,
            right,
        )
    refused = {k: c for k, c in codes.items() if c != grpc.StatusCode.UNAUTHENTICATED}
    assert refused == {}


def test_the_descriptors_cover_everything_the_services_serve(fleet):
    """Reflection (itself behind the token) lists no service beyond the enumerated ones, so no
    RPC escapes the check above."""
    expected = {s.full_name for _n, s, _m in RPCS}
    for name, channel in fleet.channels.items():
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        with pytest.raises(grpc.RpcError) as err:
            for _ in stub.ServerReflectionInfo(iter([request]), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        metadata = [("authorization", f"Bearer {TOKEN}")]
        for reply in stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=metadata):
            served = {s.name for s in reply.list_services_response.service}
        extra = (
            served
            - expected
            - {
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
                "grpc.reflection.v1.ServerReflection",
            }
        )
        assert extra == set() and served & expected, (name, served)
        # the v1 reflection service (same messages, another package) is behind the token too
        v1 = channel.stream_stream(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as err:
            for _ in v1(iter([request]), timeout=10):
                pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


# -- a Hypothesis search for a way past the guard --------------------------------------------

_INTS = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),  # open enums: unknown values too
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type in _INTS:
        return st.integers(*_INTS[field.type])
    return {
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_STRING: st.text(max_size=12),
        FieldDescriptor.TYPE_BYTES: st.binary(max_size=12),
        FieldDescriptor.TYPE_DOUBLE: st.floats(allow_nan=False),
        FieldDescriptor.TYPE_FLOAT: st.floats(allow_nan=False, width=32),
    }[field.type]


@st.composite
def messages(draw, descriptor, depth: int = 0):
    """A random message of ``descriptor``'s type, built from the descriptor alone."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            sub = field.message_type
            if depth >= 2 or sub.GetOptions().map_entry or sub.full_name.startswith("google."):
                continue
            count = draw(st.integers(0, 2)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(messages(sub, depth + 1))
                target = getattr(message, field.name)
                (target.add() if field.is_repeated else target).CopyFrom(value)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


@st.composite
def unauthenticated_calls(draw):
    index = draw(st.integers(0, len(RPCS) - 1))
    _name, _service, method = RPCS[index]
    body = draw(
        st.one_of(
            messages(method.input_type).map(lambda m: m.SerializeToString()),
            st.binary(max_size=64),  # need not even parse: the token is checked first
        )
    )
    label = draw(st.sampled_from(sorted(BAD_CREDENTIALS)))
    return index, body, label


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(call=unauthenticated_calls())
def test_no_request_body_or_bad_credential_gets_past_the_guard(fleet, call):
    index, body, label = call
    name, service, method = RPCS[index]
    code = fleet.call(name, service, method, body, BAD_CREDENTIALS[label], timeout=10)
    assert code == grpc.StatusCode.UNAUTHENTICATED, (method.full_name, label, code)


# -- TLS ------------------------------------------------------------------------------------


def test_services_refuse_plaintext_and_clients_without_a_trusted_certificate(fleet):
    for name, address in fleet.addresses.items():
        for label, credentials in (
            ("plaintext", None),
            ("no client certificate", fleet.no_client_cert),
            ("certificate from another CA", fleet.rogue),
        ):
            channel = (
                grpc.insecure_channel(address)
                if credentials is None
                else grpc.secure_channel(address, credentials)
            )
            with channel, pytest.raises(grpc.RpcError) as err:
                health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, (name, label)
        # Health needs no token (probes have none) but still the client certificate.
        reply = health_pb2_grpc.HealthStub(fleet.channels[name]).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- Redis with a password and an ACL user --------------------------------------------------

REDIS_PASSWORD = "pw-5b2e9d41"


@pytest.fixture
def secured_redis(tmp_path):
    server = LocalRedis(tmp_path / "redis", free_port(), password=REDIS_PASSWORD).start()
    yield server
    server.stop()


def queue_round_trip(url: str) -> None:
    """Publish, fetch, commit, dead-letter, stats and trim: every queue command and script."""
    r = connect(url)
    in_stream, out = "llamafleet:rollout:tasks", "llamafleet:rollout:results"
    assert publish(r, in_stream, "j:0:0:0:0", b"ok") and publish(r, in_stream, "j:0:0:0:1", b"x")
    q = WorkQueue(r, in_stream, "rollout", consumer="c", lease_ms=1000, max_deliveries=1)
    q.ensure_group()
    first, second = q.fetch(2)
    assert q.renew(first)
    assert q.commit(first, [(out, first.item_id, b"done")]) is Outcome.COMMITTED
    assert q.fail(second, "poison") is Outcome.DEADLETTERED
    s = stats(r, in_stream)
    assert (s.length, s.deadletter, s.groups[0].pending) == (2, 1, 0)
    assert trim(r, in_stream) == 2
    assert r.xlen(out) == 1 and r.xlen(DEADLETTER) == 1


def test_queue_works_with_a_redis_password_and_fails_clearly_without_it(secured_redis, tmp_path):
    port = secured_redis.port
    queue_round_trip(secured_redis.url)  # redis://:<password>@127.0.0.1:<port>/0
    for url in (f"redis://127.0.0.1:{port}/0", f"redis://:not-{REDIS_PASSWORD}@127.0.0.1:{port}/0"):
        with pytest.raises(redis.AuthenticationError):
            connect(url).ping()
        with pytest.raises(RedisUnusable) as err:  # not "unavailable": retrying cannot help
            require_redis(url, timeout_s=2)
        assert "cannot use Redis" in str(err.value) and "redis_url" in str(err.value)
        assert "Authentication required" in str(err.value) or "invalid username-password" in str(
            err.value
        )
        assert REDIS_PASSWORD not in str(err.value)
    # With Redis down, the URL that holds the right password is what the error names.
    secured_redis.stop()
    with pytest.raises(Unavailable) as err:
        require_redis(secured_redis.url, timeout_s=2)
    assert REDIS_PASSWORD not in str(err.value) and ":***@" in str(err.value)
    # A service pointed at it exits with one clear line, without the password.
    svc = start_service("rollout", tmp_path / "rollout", f"redis_url={secured_redis.url}")
    try:
        assert svc.proc.wait(timeout=60) == 1
    finally:
        stop_service(svc)
    out = svc.log.read_text()
    assert "could not start: cannot reach Redis" in out and REDIS_PASSWORD not in out


def test_queue_works_as_an_acl_user_confined_to_the_llamafleet_keys(secured_redis):
    admin = connect(secured_redis.url)
    admin.execute_command(
        "ACL", "SETUSER", "worker", "on", ">worker-pw", "~llamafleet:*", "+@all", "-@dangerous"
    )
    url = f"redis://worker:worker-pw@127.0.0.1:{secured_redis.port}/0"
    queue_round_trip(url)  # so every key the queue touches (scripts included) is llamafleet:*
    with pytest.raises(redis.exceptions.NoPermissionError):
        connect(url).set("other:key", 1)
    with pytest.raises(redis.AuthenticationError):
        connect(f"redis://worker:wrong@127.0.0.1:{secured_redis.port}/0").ping()
