"""One completion's events on the asyncio side.

The engine thread hands `TextDelta`s, then one `Finished` (or an exception)
to `deliver`, on the event loop. A client that stops reading cancels the
request. `Watchdog` looks over every open stream now and then, so that a dead
or stalled engine, or a request that stopped making progress, ends with an
error instead of leaving its client waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from igllama.engine.errors import EngineError, EngineFailure, EngineUnavailable
from igllama.engine.sequence import Finished, Sequence, Status, TextDelta


class GenerationStream:
    """The events of one completion: `TextDelta`s, then one `Finished`.

    An engine failure is raised from `__anext__` as an `EngineError`.
    `aclose()` (or dropping the stream) before the end cancels the request:
    its slot is freed at the engine's next step.
    """

    def __init__(self, inbox: queue.SimpleQueue[tuple[str, Any]], on_end: Callable[[GenerationStream], None]) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.sequence: Sequence | None = None
        # The request's progress as the watchdog last saw it (prompt tokens
        # fed, tokens generated), and when that last changed.
        self.progress_mark = (0, 0)
        self.last_progress = time.monotonic()
        # The sink the engine's events go to, on the event loop (once per token: no wrapper).
        self.deliver = self.events.put_nowait
        self._inbox = inbox
        self._on_end = on_end
        self._ended = False

    @property
    def prompt_tokens(self) -> int:
        """The length of the request's prompt, known from the moment it is submitted."""
        return len(self.sequence.prompt) if self.sequence is not None else 0

    def fail(self, error: EngineError) -> None:
        """End the stream with `error` and cancel the request in the engine."""
        if not self._ended:
            self._cancel()
            self.events.put_nowait(error)

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TextDelta | Finished:
        if self._ended and self.events.empty():
            raise StopAsyncIteration
        event = await self.events.get()
        if isinstance(event, BaseException):
            self._end()
            raise event
        if isinstance(event, Finished):
            self._end()
        return event

    async def aclose(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if not self._ended and self.sequence is not None:
            self._inbox.put(("cancel", self.sequence))
        self._end()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self)

    def __del__(self) -> None:
        self._cancel()


class Watchdog:
    """Checks every open stream each `interval` seconds.

    `health` names what is wrong with the engine (None when it serves). A
    queued request may wait as long as the engine is healthy, since the queue
    moves; an admitted one that neither prefills nor generates a token for
    `bound` seconds (and up to one interval more) is failed. (The counters are read from the engine
    thread's sequence: plain int reads, and a stale one only delays a
    verdict by one interval.)
    """

    def __init__(self, streams: set[GenerationStream], health: Callable[[], str | None], bound: float) -> None:
        self.streams = streams
        self.health = health
        self.bound = bound
        self.interval = min(5.0, bound / 2)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        """Stop watching; callable from any thread."""
        task, self._task = self._task, None
        if task is None or task.done() or task.get_loop().is_closed():
            return
        loop = task.get_loop()
        try:
            same_thread = asyncio.get_running_loop() is loop
        except RuntimeError:
            same_thread = False
        if same_thread:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)

    async def _watch(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                await asyncio.sleep(self.interval)
                self.check()

    def check(self) -> None:
        problem = self.health()
        now = time.monotonic()
        for stream in list(self.streams):
            seq = stream.sequence
            if problem is not None:
                stream.fail(EngineUnavailable(problem))
            elif seq is None or seq.status is Status.WAITING:
                stream.last_progress = now
            elif (mark := (seq.n_fed, seq.n_generated)) != stream.progress_mark:
                stream.progress_mark = mark  # a long prompt's prefill sends no event, but moves
                stream.last_progress = now
            elif now - stream.last_progress > self.bound + self.interval:
                # (+ one interval: progress is seen only at ticks, so a stream's last one may predate a
                # stalled step by an interval; the engine's own verdict on that step must come first.)
                stream.fail(EngineFailure(f"the request made no progress for {now - stream.last_progress:.0f} s"))


class ChatStream:
    """One chat reply for library callers: `async for delta in stream` yields its `TextDelta`s;
    then `stream.finished` holds the `Finished` (token counts, timings). Leaving the loop
    early cancels the request (or call `aclose()`)."""

    def __init__(self, events: AsyncIterator[TextDelta | Finished]) -> None:
        self._events = events
        self.finished: Finished | None = None

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> TextDelta:
        event = await anext(self._events)
        if isinstance(event, Finished):
            self.finished = event
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def text(self) -> str:
        """The whole reply's text (its reasoning left out)."""
        return "".join([delta.text async for delta in self])

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]
