"""Tier 2: one connection's protocol, driven through a fake transport and a fake clock.

Nothing here sleeps: timeouts fire when the test advances the fake clock,
and async handlers run when the test yields to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from igllama.http import EventStream, HTTPError, Limits, Request, Response, Router
from igllama.http.errors import default_error_body
from igllama.http.protocol import HTTPProtocol

GET = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n"


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """time() and call_later() under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every timer that falls due on the way, in order."""
        deadline = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= deadline]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = deadline


class FakeTransport:
    """Records what the protocol does to the connection."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self.protocol: HTTPProtocol | None = None

    def write(self, data: bytes) -> None:
        if self.closed:
            raise AssertionError("write after close")
        self.written += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            # A real transport reports the loss on a later loop iteration.
            if self.protocol is not None:
                asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def take(self) -> bytes:
        data = bytes(self.written)
        self.written.clear()
        return data


class Connection:
    """A protocol wired to a fake transport and clock."""

    def __init__(self, router: Router, limits: Limits | None = None,
                 error_body: Callable[[int, str], bytes] = default_error_body) -> None:
        self.clock = FakeClock()
        self.transport = FakeTransport()
        self.limits = limits or Limits(head_timeout=10.0, keepalive_timeout=5.0, body_timeout=30.0)
        self.protocol = HTTPProtocol(router, self.limits, error_body, clock=self.clock)
        self.transport.protocol = self.protocol
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)


def statuses(raw: bytes) -> list[int]:
    return [int(code) for code in __import__("re").findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def json_body(raw: bytes) -> Any:
    return orjson.loads(raw.partition(b"\r\n\r\n")[2])


async def run_loop(times: int = 5) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


@pytest.fixture
def router() -> Router:
    router = Router()
    router.add("GET", "/health", lambda request: Response.json(200, {"status": "ok"}))
    return router


# -- timeouts ----------------------------------------------------------------------


async def test_silent_client_gets_408_after_the_head_timeout(router: Router) -> None:
    conn = Connection(router)
    conn.clock.advance(9.9)
    assert not conn.transport.closed
    conn.clock.advance(0.2)
    raw = conn.transport.take()
    assert statuses(raw) == [408] and b"Connection: close" in raw
    assert json_body(raw)["error"]["code"] == 408
    assert conn.transport.closed


async def test_slow_head_gets_408_however_it_trickles(router: Router) -> None:
    conn = Connection(router)
    for byte in b"GET /health HTTP/1.1\r\nHost: t\r\n":
        conn.send(bytes([byte]))
        conn.clock.advance(0.4)  # 31 bytes x 0.4 s: past the 10 s budget
    assert statuses(conn.transport.take()) == [408]
    assert conn.transport.closed


async def test_idle_keep_alive_connection_is_closed_silently(router: Router) -> None:
    conn = Connection(router)
    conn.send(GET)
    assert statuses(conn.transport.take()) == [200]
    conn.clock.advance(4.0)
    conn.send(GET)  # activity restarts the idle timeout
    assert statuses(conn.transport.take()) == [200]
    conn.clock.advance(4.0)
    assert not conn.transport.closed
    conn.clock.advance(1.5)
    assert conn.transport.closed
    assert conn.transport.take() == b""  # RFC 9112 §9.5: no response for an idle close


async def test_head_started_after_idle_gets_the_head_timeout(router: Router) -> None:
    conn = Connection(router)
    conn.send(GET)
    conn.transport.take()
    conn.clock.advance(3.0)
    conn.send(b"GET /health HT")
    conn.clock.advance(9.0)  # past the idle timeout, within the head timeout
    assert not conn.transport.closed
    conn.clock.advance(1.5)
    assert statuses(conn.transport.take()) == [408]


async def test_each_pipelined_head_gets_its_own_head_timeout(router: Router) -> None:
    conn = Connection(router)
    conn.send(b"GET /health HTTP/1.1\r\n")
    conn.clock.advance(9.0)
    conn.send(b"Host: t\r\n\r\nGET /health HTTP/1.1\r\n")  # end of one, start of the next
    assert statuses(conn.transport.take()) == [200]
    conn.clock.advance(9.0)
    assert not conn.transport.closed  # 18 s since the first byte, 9 s since this head began
    conn.send(b"Host: t\r\n\r\n")
    assert statuses(conn.transport.take()) == [200]


async def test_slow_body_gets_408(router: Router) -> None:
    router.add("POST", "/upload", lambda request: Response(200))
    conn = Connection(router)
    conn.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    conn.clock.advance(29.0)
    assert not conn.transport.closed
    conn.clock.advance(2.0)
    assert statuses(conn.transport.take()) == [408]


# -- responses and errors -----------------------------------------------------------------


async def test_sync_handler_is_answered_inline_with_cors(router: Router) -> None:
    conn = Connection(router)
    conn.send(GET)
    raw = conn.transport.take()  # no loop iteration needed: no Task was created
    assert statuses(raw) == [200] and json_body(raw) == {"status": "ok"}
    assert b"Access-Control-Allow-Origin: *" in raw


async def test_handler_exception_is_a_generic_500_and_serving_goes_on(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request) -> Response:
        raise RuntimeError("secret detail in /home/user/model.gguf")

    router.add("GET", "/broken", broken)
    conn = Connection(router)
    with caplog.at_level(logging.ERROR, logger="igllama.http"):
        conn.send(b"GET /broken HTTP/1.1\r\nHost: t\r\n\r\n")
    raw = conn.transport.take()
    assert statuses(raw) == [500]
    assert json_body(raw)["error"] == {
        "message": "internal server error", "type": "server_error", "param": None, "code": 500,
    }
    assert b"secret" not in raw and b"Traceback" not in raw
    assert "secret detail" in caplog.text and "RuntimeError" in caplog.text
    conn.send(GET)
    assert statuses(conn.transport.take()) == [200]
    assert not conn.transport.closed


async def test_async_handler_exception_is_500_too(router: Router) -> None:
    async def broken(request: Request) -> Response:
        raise KeyError("x")

    router.add("POST", "/broken", broken)
    conn = Connection(router)
    conn.send(b"POST /broken HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n" + GET)
    await run_loop()
    assert statuses(conn.transport.take()) == [500, 200]


async def test_http_error_keeps_the_connection_open(router: Router) -> None:
    def refuse(request: Request) -> Response:
        raise HTTPError(422, "messages must not be empty", headers=[(b"X-Why", b"empty")])

    router.add("GET", "/refuse", refuse)
    conn = Connection(router)
    conn.send(b"GET /refuse HTTP/1.1\r\nHost: t\r\n\r\n")
    raw = conn.transport.take()
    assert statuses(raw) == [422] and b"X-Why: empty" in raw
    assert json_body(raw)["error"]["message"] == "messages must not be empty"
    assert b"Access-Control-Allow-Origin: *" in raw and not conn.transport.closed


async def test_parse_error_is_answered_then_the_connection_closes(router: Router) -> None:
    conn = Connection(router)
    conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n" + GET)
    raw = conn.transport.take()
    assert statuses(raw) == [400] and b"Connection: close" in raw
    assert b"Access-Control-Allow-Origin: *" in raw
    assert conn.transport.closed


async def test_every_error_uses_the_servers_error_body(router: Router) -> None:
    def plain(status: int, message: str) -> bytes:
        return orjson.dumps({"status": status, "detail": message})

    conn = Connection(router, error_body=plain)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    assert json_body(conn.transport.take()) == {"status": 404, "detail": "Invalid URL (GET /nope)"}
    conn.send(b"GET / HTTP/9.9\r\nHost: t\r\n\r\n")
    assert json_body(conn.transport.take()) == {
        "status": 505, "detail": "HTTP version 9.9 is not supported"
    }


async def test_a_broken_error_body_falls_back_to_the_default(router: Router) -> None:
    def broken(status: int, message: str) -> bytes:
        raise TypeError("oops")

    conn = Connection(router, error_body=broken)
    conn.send(b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n")
    raw = conn.transport.take()
    assert statuses(raw) == [404] and json_body(raw)["error"]["code"] == 404


async def test_connection_close_is_honoured(router: Router) -> None:
    conn = Connection(router)
    conn.send(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n" + GET)
    raw = conn.transport.take()
    assert statuses(raw) == [200] and b"Connection: close" in raw  # the second is not read
    assert conn.transport.closed


async def test_http_1_0_response_closes_unless_kept_alive(router: Router) -> None:
    conn = Connection(router)
    conn.send(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert b"Connection: keep-alive" in conn.transport.take() and not conn.transport.closed
    conn.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert b"Connection: close" in conn.transport.take() and conn.transport.closed


async def test_expect_100_continue_is_answered_before_the_body(router: Router) -> None:
    router.add("POST", "/echo", lambda request: Response(200, request.body, b"text/plain"))
    conn = Connection(router)
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    assert conn.transport.take() == b"HTTP/1.1 100 Continue\r\n\r\n"
    conn.send(b"hello")
    raw = conn.transport.take()
    assert statuses(raw) == [200] and raw.endswith(b"\r\n\r\nhello")


async def test_pipelined_requests_are_answered_in_order(router: Router) -> None:
    gate = asyncio.Event()

    async def slow(request: Request) -> Response:
        await gate.wait()
        return Response(200, b"slow", b"text/plain")

    router.add("GET", "/slow", slow)
    conn = Connection(router)
    conn.send(
        b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + GET + b"GET /nope HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    await run_loop()
    assert conn.transport.take() == b""  # /health waits for /slow, though it is ready
    gate.set()
    await run_loop()
    raw = conn.transport.take()
    assert statuses(raw) == [200, 200, 404]
    assert raw.index(b"slow") < raw.index(b'{"status":"ok"}')


# -- streams, backpressure and disconnects ------------------------------------------------------


class Tokens:
    """An event source that records whether its generator was closed."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.closed = asyncio.Event()

    async def events(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.count):
                yield b'{"token":%d}' % i
                await asyncio.sleep(0)
        finally:
            self.closed.set()


def stream_router(router: Router, tokens: Tokens) -> Router:
    async def stream(request: Request) -> EventStream:
        return EventStream(tokens.events())

    router.add("POST", "/stream", stream)
    return router


STREAM = b"POST /stream HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"


async def test_stream_frames_are_written_as_chunks_then_terminated(router: Router) -> None:
    tokens = Tokens(3)
    conn = Connection(stream_router(router, tokens))
    conn.send(STREAM)
    await run_loop(20)
    raw = conn.transport.take()
    assert b"Content-Type: text/event-stream" in raw and b"Transfer-Encoding: chunked" in raw
    assert raw.count(b"data: {") == 3 and raw.endswith(b"\r\n0\r\n\r\n")
    assert tokens.closed.is_set() and not conn.transport.closed


async def test_paused_writing_holds_the_stream_until_resumed(router: Router) -> None:
    tokens = Tokens(3)
    conn = Connection(stream_router(router, tokens))
    conn.protocol.pause_writing()
    conn.send(STREAM)
    await run_loop(20)
    assert conn.transport.take().count(b"data: ") == 1  # one frame, then it waits
    conn.protocol.resume_writing()
    await run_loop(20)
    raw = conn.transport.take()
    assert raw.count(b"data: ") == 2 and raw.endswith(b"0\r\n\r\n")


async def test_connection_lost_fails_the_drain_and_closes_the_events(router: Router) -> None:
    tokens = Tokens(3)
    conn = Connection(stream_router(router, tokens))
    conn.protocol.pause_writing()
    conn.send(STREAM)
    await run_loop(20)
    assert conn.transport.take().count(b"data: ") == 1
    conn.protocol.connection_lost(ConnectionResetError())
    await run_loop(5)
    assert tokens.closed.is_set()
    assert conn.transport.take() == b""


async def test_disconnect_cancels_the_running_handler_at_once(router: Router) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def generate(request: Request) -> Response:
        started.set()
        try:
            await asyncio.Event().wait()  # a generation that would never end
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Response(200)

    router.add("POST", "/generate", generate)
    conn = Connection(router)
    conn.send(b"POST /generate HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
    await run_loop()
    assert started.is_set()
    conn.protocol.connection_lost(None)
    await run_loop(2)
    assert cancelled.is_set()


async def test_disconnect_while_waiting_for_a_token_closes_the_generator(router: Router) -> None:
    waiting = asyncio.Event()
    closed = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            waiting.set()
            await asyncio.Event().wait()  # the engine is slow to produce the next token
            yield b"never"
        finally:
            closed.set()

    router.add("GET", "/stream", lambda request: EventStream(events()))
    conn = Connection(router)
    conn.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    await run_loop()
    assert waiting.is_set() and b"data: first" in conn.transport.take()
    conn.protocol.connection_lost(None)
    await run_loop(2)
    assert closed.is_set()


async def test_error_before_the_first_event_is_an_ordinary_response(router: Router) -> None:
    async def events() -> AsyncIterator[bytes]:
        raise HTTPError(400, "prompt too long")
        yield b""

    router.add("GET", "/stream", lambda request: EventStream(events()))
    conn = Connection(router)
    conn.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
    await run_loop()
    raw = conn.transport.take()
    assert statuses(raw) == [400, 200] and b"text/event-stream" not in raw


async def test_error_mid_stream_cuts_the_response_short(
    router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    async def events() -> AsyncIterator[bytes]:
        yield b"one"
        raise RuntimeError("engine exploded")

    router.add("GET", "/stream", lambda request: EventStream(events()))
    conn = Connection(router)
    with caplog.at_level(logging.ERROR, logger="igllama.http"):
        conn.send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        await run_loop()
    raw = conn.transport.take()
    # No last chunk: the client sees an incomplete response, not a clean end.
    assert b"data: one" in raw and not raw.endswith(b"0\r\n\r\n")
    assert conn.transport.closed and "engine exploded" in caplog.text


async def test_http_1_0_stream_is_unframed_and_ends_with_close(router: Router) -> None:
    tokens = Tokens(2)
    conn = Connection(stream_router(router, tokens))
    conn.send(b"POST /stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
    await run_loop(20)
    raw = conn.transport.take()
    assert b"Transfer-Encoding" not in raw and b"Connection: close" in raw
    assert raw.endswith(b'data: {"token":1}\n\n') and conn.transport.closed


# -- reading backpressure and shutdown ------------------------------------------------------------


async def test_reading_pauses_above_the_high_water_mark_while_busy(router: Router) -> None:
    gate = asyncio.Event()

    async def slow(request: Request) -> Response:
        await gate.wait()
        return Response(200)

    router.add("GET", "/slow", slow)
    conn = Connection(router, Limits(read_high_water=1024))
    conn.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await run_loop()
    conn.send(GET * 10)  # ~330 bytes waiting: under the mark
    assert conn.transport.reading
    conn.send(GET * 30)  # now over it
    assert not conn.transport.reading
    gate.set()
    await run_loop()
    assert conn.transport.reading
    assert statuses(conn.transport.take()) == [200] * 41


async def test_shutdown_closes_idle_connection_at_once(router: Router) -> None:
    conn = Connection(router)
    conn.send(GET)
    conn.protocol.shutdown()
    assert conn.transport.closed


async def test_shutdown_lets_the_response_in_flight_finish(router: Router) -> None:
    gate = asyncio.Event()

    async def slow(request: Request) -> Response:
        await gate.wait()
        return Response(200, b"done", b"text/plain")

    router.add("GET", "/slow", slow)
    conn = Connection(router)
    conn.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n" + GET)
    await run_loop()
    conn.protocol.shutdown()
    assert not conn.transport.closed
    gate.set()
    await run_loop()
    raw = conn.transport.take()
    # The pipelined /health is dropped: the server is going away.
    assert statuses(raw) == [200] and raw.endswith(b"done") and b"Connection: close" in raw
    assert conn.transport.closed
    await conn.protocol.wait_closed()


class Gated:
    """A stream whose frames come when the test releases them."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def events(self) -> AsyncIterator[bytes]:
        while (payload := await self.queue.get()) is not None:
            yield payload


def gated_router(router: Router, gated: Gated, keepalive: float, content_type: bytes = b"text/event-stream") -> Router:
    async def stream(request: Request) -> EventStream:
        return EventStream(gated.events(), keepalive=keepalive, content_type=content_type,
                           framed=content_type == b"text/event-stream")

    router.add("POST", "/stream", stream)
    return router


async def test_a_silent_stream_gets_ping_comments_and_its_head_at_the_first(router: Router) -> None:
    gated = Gated()
    conn = Connection(gated_router(router, gated, keepalive=5.0))
    conn.send(STREAM)
    await run_loop(5)
    assert conn.transport.take() == b""  # nothing yet: an error could still be a plain response
    conn.clock.advance(5.1)
    raw = conn.transport.take()
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"8\r\n: ping\n\n\r\n")
    conn.clock.advance(5.0)
    assert conn.transport.take() == b"8\r\n: ping\n\n\r\n"
    gated.queue.put_nowait(b'{"token":1}')
    await run_loop(5)
    assert conn.transport.take().count(b"data: ") == 1
    conn.clock.advance(4.0)  # a frame went out: the next ping is due 5 s after it
    assert conn.transport.take() == b""
    gated.queue.put_nowait(None)
    await run_loop(5)
    assert conn.transport.take().endswith(b"0\r\n\r\n")
    conn.clock.advance(30.0)
    assert b"ping" not in conn.transport.take()  # the timer stopped with the stream


async def test_a_busy_stream_sends_no_pings(router: Router) -> None:
    gated = Gated()
    conn = Connection(gated_router(router, gated, keepalive=5.0))
    conn.send(STREAM)
    for i in range(10):
        gated.queue.put_nowait(b'{"token":%d}' % i)
        await run_loop(3)
        conn.clock.advance(1.0)
    assert b"ping" not in conn.transport.take()


async def test_ndjson_streams_get_no_pings(router: Router) -> None:
    # A comment line is not JSON: an Ollama client would choke on it.
    gated = Gated()
    conn = Connection(gated_router(router, gated, keepalive=5.0, content_type=b"application/x-ndjson"))
    conn.send(STREAM)
    await run_loop(5)
    conn.clock.advance(20.0)
    assert conn.transport.take() == b""
    gated.queue.put_nowait(None)
    await run_loop(5)
