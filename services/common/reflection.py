"""Server reflection under both names clients ask for: ``grpc.reflection.v1`` and ``v1alpha``.

grpcio-reflection (1.85) implements only ``grpc.reflection.v1alpha.ServerReflection``; newer
tools (grpcurl, Postman, grpc-go's ``grpcreflect`` v2) ask for ``grpc.reflection.v1`` first. The
two protocols are the same messages under another package name (field numbers and types are
identical, so the bytes on the wire are too), so the library's servicer answers both: this
module registers it a second time under the v1 method path, and adds a v1 copy of the
reflection file descriptor to the pool (derived from the v1alpha one by renaming the package), so
that a client can also describe the v1 service itself.

Why by hand: no released grpcio-reflection serves v1 yet; this is the smallest bridge.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as alpha

V1_PACKAGE = "grpc.reflection.v1"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_ALPHA_PACKAGE = "grpc.reflection.v1alpha"
_V1_FILE = "grpc/reflection/v1/reflection.proto"


def _add_v1_descriptor(pool: descriptor_pool.DescriptorPool) -> None:
    """The v1alpha reflection file, renamed to v1, in ``pool`` (once per process)."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    alpha.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = V1_PACKAGE
    proto.options.Clear()  # java/go package options name v1alpha; none matter to a pool

    def rename(type_name: str) -> str:
        old = f".{_ALPHA_PACKAGE}."
        return f".{V1_PACKAGE}." + type_name[len(old) :] if type_name.startswith(old) else type_name

    for message in proto.message_type:
        for field in message.field:
            if field.type_name:  # proto2: assigning "" would mark a scalar field as typed
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type = rename(method.input_type)
            method.output_type = rename(method.output_type)
    pool.Add(proto)


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection for ``service_names`` (plus both reflection services) on ``server``."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    names = [*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME]
    servicer = reflection.aio.ReflectionServicer(names, pool=pool)
    for service_name in (reflection.SERVICE_NAME, V1_SERVICE_NAME):
        handler = grpc.method_handlers_generic_handler(
            service_name,
            {
                "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
                    servicer.ServerReflectionInfo,
                    request_deserializer=alpha.ServerReflectionRequest.FromString,
                    response_serializer=alpha.ServerReflectionResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
