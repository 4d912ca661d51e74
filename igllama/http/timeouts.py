"""One connection's timeouts: a single timer, re-armed lazily.

A connection is always waiting for something: the next request (idle), the
rest of a head, the rest of a body, or its own response (busy, no timeout).
Each request moves it through those phases, and arming a timer per phase
would cost two timer operations per request on the hot path. Instead the
hot path only records when the current phase began; the one timer, when it
fires, compares that with the phase's timeout and either reports expiry or
re-arms itself for the time left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

IDLE, HEAD, BODY, BUSY = range(4)
# Timers may fire a hair early (uvloop's clock has millisecond resolution).
_SLACK: Final = 0.001


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of the event loop timeouts use; tests pass a fake one."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Cancellable: ...


class Watchdog:
    """Calls ``on_expired(phase)`` when a phase lasts longer than its timeout."""

    __slots__ = ("_clock", "_due", "_on_expired", "_since", "_timeout", "_timer", "phase")

    def __init__(self, clock: Clock, on_expired: Callable[[int], None]) -> None:
        self._clock = clock
        self._on_expired = on_expired
        self.phase = BUSY
        self._since = 0.0
        self._timeout = 0.0
        self._timer: Cancellable | None = None
        self._due = 0.0

    def enter(self, phase: int, timeout: float) -> None:
        """Start ``phase`` now; expire it after ``timeout`` seconds."""
        now = self._clock.time()
        self.phase = phase
        self._since = now
        self._timeout = timeout
        deadline = now + timeout
        if self._timer is not None:
            if self._due <= deadline:
                return  # fires early enough; it will re-arm for the rest
            self._timer.cancel()
        self._timer = self._clock.call_later(timeout, self._fire)
        self._due = deadline

    def busy(self) -> None:
        """Wait on our own work: no timeout until the next ``enter``."""
        self.phase = BUSY

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        if self.phase == BUSY:
            return  # armed again by the next enter()
        now = self._clock.time()
        deadline = self._since + self._timeout
        if now < deadline - _SLACK:
            self._timer = self._clock.call_later(deadline - now, self._fire)
            self._due = deadline
        else:
            self._on_expired(self.phase)


class Keepalive:
    """Calls ``send()`` whenever ``interval`` seconds pass without a ``touch()``
    (an event stream's pings); one timer, re-armed for the time left."""

    __slots__ = ("_clock", "_interval", "_last", "_send", "_timer")

    def __init__(self, clock: Clock, interval: float, send: Callable[[], None]) -> None:
        self._clock = clock
        self._interval = interval
        self._send = send
        self._last = clock.time()
        self._timer: Cancellable | None = clock.call_later(interval, self._fire)

    def touch(self) -> None:
        """Something was sent: the next ping is due ``interval`` from now."""
        self._last = self._clock.time()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        now = self._clock.time()
        due = self._last + self._interval
        if now >= due - _SLACK:
            self._send()
            self._last = now
            due = now + self._interval
        self._timer = self._clock.call_later(due - now, self._fire)
