"""The four real services in one process, for the bad-input and property tests.

Each service runs on its own ``ServiceHost`` (port 0, loopback) with its real ``make_register`` /
``build_app``, all on one asyncio loop in a background thread, so tests call them with plain
blocking gRPC channels and raw request bytes. Rollout serves a tiny model (CPU) and fetches
adapters from the training service; data reads the tiny model's tokenizer. Message size is capped
at 1 MiB (``max_message_mb=1``) so oversize requests are cheap to build.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llamafleet.data.v1 import data_service_pb2
from llamafleet.reward.v1 import reward_service_pb2
from llamafleet.rollout.v1 import rollout_service_pb2
from llamafleet.training.v1 import training_service_pb2

from services.common.server import ServiceHost
from services.data.config import DataConfig
from services.data.server import make_register as data_register
from services.reward.config import RewardConfig
from services.reward.server import build_app as reward_app
from services.rollout.config import RolloutConfig
from services.rollout.server import make_register as rollout_register
from services.training.config import TrainingConfig
from services.training.server import make_register as training_register

MODULES = {
    "data": data_service_pb2,
    "training": training_service_pb2,
    "rollout": rollout_service_pb2,
    "reward": reward_service_pb2,
}
# (service name, service descriptor, method descriptor) for every RPC of the four services.
RPCS = [
    (name, service, method)
    for name, module in MODULES.items()
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
COMMON = {"shutdown_delay_s": 0.0, "grace_s": 0.5, "max_message_mb": 1}


@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str
    messages: int = 0


@dataclass
class InProcFleet:
    workdir: Path
    tiny_model: Path
    addresses: dict[str, str] = field(default_factory=dict)

    def start(self) -> InProcFleet:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=180)
        self.channels = {n: grpc.insecure_channel(a) for n, a in self.addresses.items()}
        return self

    async def _start(self) -> None:
        w = self.workdir
        self.hosts: list[ServiceHost] = []
        # the test module's folder (its data files, the tiny model) is what requests may read
        roots = str(w.parent)
        self.data_config = DataConfig(
            datasets_dir=str(w / "datasets"),
            registry_dir=str(w / "registry"),
            dataset_roots=roots,
            model_roots=roots,
            **COMMON,
        )
        await self._host("data", self.data_config, data_register(self.data_config))
        # training reads job batches from the data service (it refuses jobs without one)
        self.training_config = TrainingConfig(
            jobs_dir=str(w / "jobs"),
            data_address=self.addresses["data"],
            model_roots=roots,
            export_roots=str(w.parent.parent),  # the pytest session's folder (CLI tests' too)
            **COMMON,
        )
        self.reward = reward_app(RewardConfig(worker_threads=0, rule_threads=1, **COMMON))
        for name, config, register in (
            ("training", self.training_config, training_register(self.training_config)),
            ("reward", self.reward.config, self.reward.register),
        ):
            await self._host(name, config, register)
        rollout = RolloutConfig(
            base_model=str(self.tiny_model),
            device="cpu",
            training_address=self.addresses["training"],
            adapter_cache_dir=str(w / "adapter-cache"),
            max_tokens_limit=64,
            default_max_tokens=4,
            **COMMON,
        )
        await self._host("rollout", rollout, rollout_register(rollout))

    async def _host(self, name, config, register) -> None:
        host = ServiceHost(name, config, register)
        await host.start()
        self.hosts.append(host)
        self.addresses[name] = host.address

    def stop(self) -> None:
        for channel in self.channels.values():
            channel.close()

        async def stop_all() -> None:
            await asyncio.gather(*(h.stop(grace=0) for h in self.hosts))

        asyncio.run_coroutine_threadsafe(stop_all(), self._loop).result(timeout=60)
        self.reward.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    # -- calls ------------------------------------------------------------------------------

    def call(
        self,
        name: str,
        service: str,
        method: str,
        body: bytes,
        *,
        streaming: bool = False,
        timeout: float = 30.0,
        max_messages: int = 3,
    ) -> Outcome:
        """One RPC with a raw body; a stream is read for ``max_messages`` then cancelled."""
        path = f"/{service}/{method}"
        channel = self.channels[name]
        try:
            if streaming:
                call = channel.unary_stream(path)(body, timeout=timeout)
                n = 0
                for _ in call:
                    n += 1
                    if n >= max_messages:
                        call.cancel()
                        return Outcome(grpc.StatusCode.OK, "cancelled after reading", n)
                return Outcome(grpc.StatusCode.OK, "", n)
            channel.unary_unary(path)(body, timeout=timeout)
        except grpc.RpcError as err:
            return Outcome(err.code(), err.details() or "")
        return Outcome(grpc.StatusCode.OK, "", 1)

    def call_rpc(self, name, service_desc, method_desc, body: bytes, **kw) -> Outcome:
        return self.call(
            name,
            service_desc.full_name,
            method_desc.name,
            body,
            streaming=method_desc.server_streaming,
            **kw,
        )

    def health(self, name: str) -> str:
        try:
            reply = health_pb2_grpc.HealthStub(self.channels[name]).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        except grpc.RpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def good_call(self, name: str) -> Outcome:
        """A request each service answers OK, to show it still works after a bad one."""
        if name == "data":
            return self.call(
                name, "llamafleet.data.v1.DataService", "ListDatasets", b"", timeout=10
            )
        if name == "training":
            return self.call(
                name, "llamafleet.training.v1.TrainingService", "ListTrainingJobs", b"", timeout=10
            )
        if name == "rollout":
            return self.call(
                name, "llamafleet.rollout.v1.RolloutService", "ListAdapters", b"", timeout=10
            )
        body = reward_service_pb2.ScoreRolloutsRequest(
            scorer="exact_match",
        )
        body.items.add(item_id="a", completion_text="x", reference_answer="x")
        return self.call(
            name,
            "llamafleet.reward.v1.RewardService",
            "ScoreRollouts",
            body.SerializeToString(),
            timeout=10,
        )

    def assert_serving(self, name: str) -> None:
        assert self.health(name) == "SERVING", name
        good = self.good_call(name)
        assert good.code == grpc.StatusCode.OK, (name, good)
