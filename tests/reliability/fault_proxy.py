"""A TCP proxy on loopback that a test can cut and heal (toxiproxy cannot be installed here).

It runs its own asyncio loop in a daemon thread and forwards ``127.0.0.1:<port>`` to an
upstream address. Two faults:

- ``cut()``: every open connection is aborted (RST) and new ones are accepted and aborted at
  once, until ``heal()``: what a crashed link or a restarted load balancer looks like.
- ``partition()``: nothing is forwarded in either direction, but nothing is dropped either;
  bytes wait in the proxy (and the kernel) and flow on ``heal()``, as TCP retransmission
  delivers them after a network partition. A command a client gave up on (timeout) may so
  still reach the server late, which is the adversarial case for idempotency.

Counters (connections, aborted, bytes held back) let a test prove the fault really happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass


@dataclass
class ProxyStats:
    connections: int = 0
    aborted: int = 0  # connections reset by cut()
    refused: int = 0  # connections accepted and reset while cut
    held_chunks: int = 0  # chunks that waited for heal() during a partition


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.stats = ProxyStats()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._cut = False
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control, from the test's thread ---------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        self._call(self._set(cut=True, flowing=True, abort=True))

    def partition(self) -> None:
        self._call(self._set(cut=False, flowing=False, abort=False))

    def heal(self) -> None:
        self._call(self._set(cut=False, flowing=True, abort=False))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # -- the loop's side -------------------------------------------------------------------

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set(self, *, cut: bool, flowing: bool, abort: bool) -> None:
        self._cut = cut
        if abort:
            for writer in list(self._writers):
                self.stats.aborted += 1
                writer.transport.abort()
            self._writers.clear()
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _close(self) -> None:
        await self._set(cut=True, flowing=True, abort=True)
        if self._server is not None:
            self._server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.stats.refused += 1
            writer.transport.abort()
            return
        self.stats.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not self._flowing.is_set():
                self.stats.held_chunks += 1
                await self._flowing.wait()
            if not data:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
