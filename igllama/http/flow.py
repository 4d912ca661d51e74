"""Write-side backpressure for one connection."""

from __future__ import annotations

import asyncio


class ConnectionLost(Exception):
    """The peer went away while a response was being written."""


class FlowControl:
    """Turns the transport's pause_writing/resume_writing into an awaitable drain.

    The transport calls ``pause_writing`` when its send buffer passes the
    high-water mark. A streaming writer then awaits ``drain()``, which
    returns on ``resume_writing`` and raises ``ConnectionLost`` once the
    connection is gone, so a vanished client stops the stream instead of
    tokens piling up in a buffer nobody reads.
    """

    __slots__ = ("_lost", "_paused", "_waiter")

    def __init__(self) -> None:
        self._paused = False
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None

    @property
    def must_wait(self) -> bool:
        """True when a writer should await ``drain()`` before writing more."""
        return self._paused or self._lost

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self) -> None:
        self._lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionLost("the client closed the connection"))

    async def drain(self) -> None:
        """Wait until the transport can take more data; raise if the peer is gone."""
        if self._lost:
            raise ConnectionLost("the client closed the connection")
        if not self._paused:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None
