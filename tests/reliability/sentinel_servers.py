"""A Redis primary, its replica and three Redis Sentinels on loopback, for the failover tests.

Real processes: ``redis-server`` (primary; replica with ``--replicaof``), both with the AOF the
project asks for, and ``redis-sentinel`` (Debian's package; scripts/setup.sh installs it) with a
quorum of 2 and ``down-after-milliseconds`` 1000, so a killed primary is replaced in seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from llamafleet.redis_local import LocalRedis, free_port

SERVICE = "llamafleet"
DOWN_AFTER_MS = 1000


@dataclass
class ServerWithArgs(LocalRedis):
    """``LocalRedis`` with extra ``redis-server`` arguments (``--replicaof`` ...)."""

    extra: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*super().command(), *self.extra]


@dataclass
class SentinelSet:
    root: Path
    primary: ServerWithArgs | None = None
    replica: ServerWithArgs | None = None
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen] = field(default_factory=list)

    def start(self) -> SentinelSet:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel is not installed: run scripts/setup.sh")
        debug = ["--enable-debug-command", "local"]  # DEBUG SLEEP: a replica that falls behind
        self.primary = ServerWithArgs(self.root / "primary", free_port(), extra=debug).start()
        self.replica = ServerWithArgs(
            self.root / "replica",
            free_port(),
            extra=[*debug, "--replicaof", "127.0.0.1", str(self.primary.port)],
        ).start()
        for i in range(3):
            port = free_port()
            folder = self.root / f"sentinel-{i}"
            folder.mkdir(parents=True)
            conf = folder / "sentinel.conf"  # sentinels rewrite their file: one each
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder}\n"
                f"logfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            self.sentinels.append(
                subprocess.Popen(
                    [binary, str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            self.sentinel_ports.append(port)
        self.wait(lambda: self.replica_in_sync(), 20, "the replica to sync")
        self.wait(lambda: self.sentinels_agree(self.primary.port), 20, "the sentinels to start")
        return self

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def primary_port(self, sentinel: int = 0) -> int | None:
        try:
            s = redis.Redis(port=self.sentinel_ports[sentinel], socket_timeout=1)
            reply = s.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)
            s.close()
        except redis.RedisError:
            return None
        return int(reply[1]) if reply else None

    def sentinels_agree(self, port: int) -> bool:
        """Every sentinel names ``port`` as the primary and sees the replica and the others."""
        for i, sentinel_port in enumerate(self.sentinel_ports):
            if self.primary_port(i) != port:
                return False
            s = redis.Redis(port=sentinel_port, socket_timeout=1, decode_responses=True)
            info = s.execute_command("SENTINEL", "master", SERVICE)
            s.close()
            fields = (
                dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) else info
            )
            if int(fields.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    def replica_in_sync(self) -> bool:
        info = redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")
        return info.get("master_link_status") == "up"

    def kill_primary(self) -> float:
        """SIGKILL the primary; returns when (monotonic) it died."""
        self.primary.kill()
        return time.monotonic()

    def wait_promoted(self, timeout: float = 30.0) -> float:
        """Until the sentinels name the replica as the primary and it accepts writes; returns
        when that was seen (monotonic)."""

        def promoted() -> bool:
            if not self.sentinels_agree(self.replica.port):
                return False
            return (
                redis.Redis(port=self.replica.port, socket_timeout=1).info("replication")["role"]
                == "master"
            )

        self.wait(promoted, timeout, "Sentinel to promote the replica")
        return time.monotonic()

    @staticmethod
    def wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.sentinels:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()
