"""What every provider stand-in shares: an aiohttp server on 127.0.0.1 port 0, recorded
arrivals, and injected provider trouble (`fail_next`, `delay_next`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web


@dataclass
class Fault:
    status: int | None = None  # None: answer normally (after the delay)
    delay: float = 0.0
    code: int | None = None
    message: str | None = None


class StandinServer:
    """Subclasses add their routes in `_routes(app)` and call `await self._next_fault()`
    at the top of each handler."""

    def __init__(self) -> None:
        self.base_url = ""
        self._faults: list[Fault] = []
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> str:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def close(self) -> None:
        self._closing.set()  # releases delayed handlers
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> StandinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- failure injection
    def fail_next(
        self, n: int = 1, status: int = 500, *, code: int | None = None, message: str | None = None
    ) -> None:
        """Answer the next `n` requests with `status` and the provider's error body."""
        self._faults += [Fault(status=status, code=code, message=message) for _ in range(n)]

    def delay_next(self, seconds: float, n: int = 1) -> None:
        """Hold the next `n` requests for `seconds` before handling them normally."""
        self._faults += [Fault(delay=seconds) for _ in range(n)]

    async def _next_fault(self) -> Fault | None:
        """The fault injected for this request, after its delay (if any) has passed."""
        fault = self._faults.pop(0) if self._faults else None
        if fault and fault.delay:
            try:
                await asyncio.wait_for(self._closing.wait(), fault.delay)
            except TimeoutError:
                pass
        return fault

    async def _notify(self) -> None:
        async with self._arrived:
            self._arrived.notify_all()

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(done), timeout)
