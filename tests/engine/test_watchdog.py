"""The watchdog that turns a hang into an error, without a model or a clock to wait on."""

from __future__ import annotations

import queue
import time
from typing import Any

from igllama.engine.errors import EngineFailure, EngineUnavailable
from igllama.engine.sequence import Sequence, Status
from igllama.engine.stream import GenerationStream, Watchdog
from igllama.engine.text import TextPipeline


class Closable:
    def close(self) -> None:
        pass


def open_stream(streams: set[GenerationStream], inbox: queue.SimpleQueue[Any], status: Status) -> GenerationStream:
    stream = GenerationStream(inbox, streams.discard)
    seq = Sequence(len(streams), [1, 2, 3], 8, Closable(), TextPipeline((), False), stream.deliver)  # type: ignore[arg-type]
    seq.status = status
    stream.sequence = seq
    streams.add(stream)
    return stream


def ended_with(stream: GenerationStream) -> Any:
    return stream.events.get_nowait() if not stream.events.empty() else None


def test_a_silent_admitted_request_fails_a_queued_one_waits_a_moving_one_lives() -> None:
    streams: set[GenerationStream] = set()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    watchdog = Watchdog(streams, lambda: None, bound=60)
    stuck = open_stream(streams, inbox, Status.DECODING)
    queued = open_stream(streams, inbox, Status.WAITING)
    prefilling = open_stream(streams, inbox, Status.PREFILLING)
    watchdog.check()  # records where each one is
    long_ago = time.monotonic() - 66  # the bound and one check interval (5 s) ago
    for stream in (stuck, queued, prefilling):
        stream.last_progress = long_ago
    assert prefilling.sequence is not None
    prefilling.sequence.n_fed += 512  # a long prompt's prefill moves without sending an event

    watchdog.check()

    error = ended_with(stuck)
    assert isinstance(error, EngineFailure) and "no progress for 66 s" in str(error)
    assert inbox.get_nowait() == ("cancel", stuck.sequence)  # its slot is freed too
    assert ended_with(queued) is None and ended_with(prefilling) is None
    assert streams == {queued, prefilling}


def test_a_request_is_given_one_check_interval_beyond_the_bound() -> None:
    """Progress is seen only at checks, so a request's last one may predate a step that stalls
    the whole engine by an interval: the engine's verdict (503, engine_unavailable) on such a
    stall must come before the request's own (500)."""
    streams: set[GenerationStream] = set()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    watchdog = Watchdog(streams, lambda: None, bound=60)
    decoding = open_stream(streams, inbox, Status.DECODING)
    watchdog.check()
    decoding.last_progress = time.monotonic() - 63
    watchdog.check()
    assert ended_with(decoding) is None
    decoding.last_progress = time.monotonic() - 66
    watchdog.check()
    assert isinstance(ended_with(decoding), EngineFailure)


def test_an_engine_that_stopped_fails_every_open_stream_at_once() -> None:
    streams: set[GenerationStream] = set()
    inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
    problem: list[str] = []
    watchdog = Watchdog(streams, lambda: problem[0] if problem else None, bound=300)
    opened = [open_stream(streams, inbox, status) for status in (Status.WAITING, Status.DECODING)]
    watchdog.check()
    assert all(ended_with(stream) is None for stream in opened)

    problem.append("the engine thread stopped: SystemExit")
    watchdog.check()
    for stream in opened:
        error = ended_with(stream)
        assert isinstance(error, EngineUnavailable) and "SystemExit" in str(error)
    assert not streams
