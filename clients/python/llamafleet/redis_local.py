"""Start and stop a private ``redis-server`` for the local cluster and for tests.

The queue Redis is configured the way DESIGN.md asks for work queues: AOF persistence
(``appendfsync everysec``) so a killed server restarts with every acknowledged write, and
``maxmemory-policy noeviction`` so a full Redis fails loudly instead of evicting the queue.
Optionally with a password (``requirepass``) and TLS (``RedisTls``: the plaintext port is closed,
clients need the CA and, by default, a certificate from it; the ``url`` is then
``rediss://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...``, which redis-py's
``from_url`` understands).

This module knows nothing about the services or the queues; it only manages the process.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path


class RedisNotInstalledError(RuntimeError):
    """``redis-server`` is not on PATH."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RedisTls:
    """PEM files for a TLS-only ``redis-server``. The server presents ``cert``/``key``; with
    ``auth_clients`` it wants a client certificate signed by ``ca``, and the ``url`` presents
    ``client_cert``/``client_key`` (default: the server's own pair)."""

    cert: str | os.PathLike
    key: str | os.PathLike
    ca: str | os.PathLike
    client_cert: str | os.PathLike = ""
    client_key: str | os.PathLike = ""
    auth_clients: bool = True

    def client_files(self) -> tuple[str, str] | None:
        if not self.auth_clients:
            return None
        return str(self.client_cert or self.cert), str(self.client_key or self.key)

    def query(self) -> str:
        """The ``ssl_*`` query of a ``rediss://`` URL for a client of this server."""
        params = {"ssl_ca_certs": str(self.ca)}
        if (files := self.client_files()) is not None:
            params["ssl_certfile"], params["ssl_keyfile"] = files
        return urllib.parse.urlencode(params, safe="/", quote_via=urllib.parse.quote)


@dataclass
class LocalRedis:
    """A ``redis-server`` process bound to loopback, with its data in ``data_dir``."""

    data_dir: Path
    port: int
    appendonly: bool = True
    password: str | None = None
    process: subprocess.Popen | None = None
    tls: RedisTls | None = None  # TLS only: ``port`` is the TLS port, no plaintext one

    @property
    def url(self) -> str:
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?{self.tls.query()}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalledError(
                "redis-server is not installed; run `apt-get install -y redis-server` "
                "(scripts/demo.sh and scripts/test.sh do this), or pass --redis-url"
            )
        ports = ["--port", str(self.port)]
        if self.tls is not None:
            ports = [
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "yes" if self.tls.auth_clients else "no",
            ]  # fmt: skip
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            *ports,
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd

    def start(self, timeout: float = 10.0) -> LocalRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                log = self.data_dir / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {tail}")
            try:
                with self._connect(timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    reply = sock.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):  # -LOADING: AOF still loading
                        return
            except ssl.SSLCertVerificationError as exc:  # no retry fixes a certificate
                self.stop()
                raise RuntimeError(
                    f"redis-server's TLS certificate is not trusted: {exc}"
                ) from None
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout}s")

    def _connect(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if self.tls is None:
            return sock
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        if (files := self.tls.client_files()) is not None:
            context.load_cert_chain(*files)
        try:
            return context.wrap_socket(sock, server_hostname="127.0.0.1")
        except BaseException:
            sock.close()
            raise

    def kill(self) -> None:
        """SIGKILL the server (for fault tests); its AOF stays on disk."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)

    def restart(self) -> None:
        """Start again on the same port and data dir (reloads the AOF)."""
        self.stop()
        self.start()


def start_local_redis(data_dir: str | os.PathLike, port: int | None = None, **kw) -> LocalRedis:
    return LocalRedis(Path(data_dir), port or free_port(), **kw).start()
