"""A TCP relay on loopback that tests can cut: the network between the gateway and Prosody.

`cut()` drops every relayed connection at once (as a NAT timeout or a dead Wi-Fi would) and,
until `heal()`, new connections are closed as soon as they arrive. `chunks` records what went
each way, with the time: ("up", t, bytes) from the client, ("down", t, bytes) to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.peers import LOOPBACK


class TcpRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._blocked = False
        self.chunks: list[tuple[str, float, bytes]] = []

    async def __aenter__(self) -> TcpRelay:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._blocked:
            writer.close()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        for source, sink, way in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(self._pipe(source, sink, way))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    way: str) -> None:
        try:
            while data := await source.read(65536):
                self.chunks.append((way, time.monotonic(), data))
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()

    def cut(self) -> None:
        """Drop every connection now and refuse new ones until `heal()`."""
        self._blocked = True
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()

    def heal(self) -> None:
        self._blocked = False
