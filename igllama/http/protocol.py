"""One asyncio.Protocol per connection: parse, dispatch, write, time out.

State is grouped by lifetime, as in uvicorn's protocols: what the whole
server shares, what one connection owns, what one request in flight owns.
Requests on a connection are answered one at a time, in order (RFC 9112
§9.3.2); bytes of pipelined requests wait in the parser meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from .cors import ANY_ORIGIN, CorsPolicy
from .errors import HTTPError, ParseError, default_error_body
from .flow import ConnectionLost, FlowControl
from .limits import Limits
from .message import Request
from .parser import IDLE as PARSER_IDLE
from .parser import HeadReceived, NeedData, RequestParser
from .response import (
    CLOSE,
    CONTINUE,
    JSON,
    KEEP_ALIVE_1_0,
    KEEP_OPEN,
    LAST_CHUNK,
    PING,
    SSE,
    EventStream,
    Response,
    encode_event,
    encode_response,
    encode_stream_head,
)
from .router import Result, Router
from .timeouts import BODY, HEAD, IDLE, Clock, Keepalive, Watchdog

logger = logging.getLogger("igllama.http")

ErrorBody = Callable[[int, str], bytes]


class HTTPProtocol(asyncio.Protocol):
    """Serves HTTP/1.1 requests on one connection."""

    __slots__ = (  # noqa: RUF023 - grouped by lifetime, as in __init__
        "_router", "_limits", "_error_body", "_connections", "_loop", "_cors",
        "_transport", "_parser", "_flow", "_clock", "_watchdog", "_closing", "_lost", "_stopping",
        "_reading_paused", "_closed_waiter",
        "_task",
    )

    _transport: asyncio.Transport  # set by connection_made, before any other callback

    def __init__(
        self,
        router: Router,
        limits: Limits,
        error_body: ErrorBody,
        connections: set[HTTPProtocol] | None = None,
        clock: Clock | None = None,
        cors: CorsPolicy = ANY_ORIGIN,
    ) -> None:
        """Create the protocol for one connection; call it inside the running loop.

        ``connections`` is the server's set of open connections, which the
        protocol joins and leaves; ``clock`` defaults to the running loop.
        """
        # Shared by the whole server.
        self._router = router
        self._limits = limits
        self._error_body = error_body
        self._cors = cors
        self._connections: set[HTTPProtocol] = connections if connections is not None else set()
        self._loop = asyncio.get_running_loop()
        # Owned by this connection.
        self._parser = RequestParser(limits.max_head_bytes, limits.max_body_bytes)
        self._flow = FlowControl()
        self._clock = clock if clock is not None else cast(Clock, self._loop)
        self._watchdog = Watchdog(self._clock, self._on_timeout)
        self._closing = False
        self._lost = False
        self._stopping = False
        self._reading_paused = False
        self._closed_waiter: asyncio.Future[None] | None = None
        # Owned by the request in flight, when its handler runs as a Task.
        self._task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol callbacks -----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop (like asyncio) sets TCP_NODELAY on accepted sockets, so a
        # small SSE frame is sent at once instead of waiting on Nagle.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=self._limits.write_high_water)
        self._connections.add(self)
        # The head timeout runs from the start, so a client that connects and
        # never speaks is answered 408 and closed like a slow one.
        self._watchdog.enter(HEAD, self._limits.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._closing = True
        self._connections.discard(self)
        self._flow.connection_lost()
        self._watchdog.cancel()
        # Cancelling the handler's Task is how it learns the client is gone:
        # its awaits raise CancelledError and its cleanup stops generation.
        if self._task is not None:
            self._task.cancel()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)

    def eof_received(self) -> bool:
        # A client that half-closes is almost always one that went away
        # (killed curl, closed tab); treating EOF as a disconnect stops its
        # generation at once. Returning False lets the transport close.
        return False

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        if self._task is None:
            self._process()
        else:
            self._pause_reading_if_full()

    def pause_writing(self) -> None:
        self._flow.pause_writing()

    def resume_writing(self) -> None:
        self._flow.resume_writing()

    # -- server control -------------------------------------------------------

    def shutdown(self) -> None:
        """Close once the response in flight (if any) is finished."""
        self._stopping = True
        if self._task is None:
            self._close()

    def abort(self) -> None:
        """Close now, cancelling the response in flight."""
        if self._task is not None:
            self._task.cancel()
        if not self._lost:
            self._closing = True
            self._transport.abort()

    async def wait_closed(self) -> None:
        """Return once the connection is closed."""
        if self._lost:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        # Shielded: a waiter that gives up must not cancel the shared future.
        await asyncio.shield(self._closed_waiter)

    # -- reading requests ----------------------------------------------------

    def _process(self) -> None:
        """Answer buffered requests until one needs a Task or more bytes are needed."""
        parser = self._parser
        while not self._closing:
            try:
                event = parser.next_event()
            except ParseError as exc:
                self._fail(exc.status, exc.message)
                return
            if type(event) is Request:
                # The request's head and body are in: their timeouts end here.
                self._watchdog.busy()
                if not self._respond(event):
                    return
            elif type(event) is NeedData:
                if event is PARSER_IDLE and not self._stopping:
                    # Entered after every response: the idle timeout restarts.
                    self._watchdog.enter(IDLE, self._limits.keepalive_timeout)
                else:
                    self._wait_for_input()
                return
            elif type(event) is HeadReceived:
                self._watchdog.enter(BODY, self._limits.body_timeout)
                if event.expects_continue:
                    # RFC 9110 §10.1.1: tell the client to send the body.
                    self._transport.write(CONTINUE)

    def _wait_for_input(self) -> None:
        parser = self._parser
        if parser.idle:
            self._close()  # stopping: nothing is in flight, nothing more is read
        elif self._watchdog.phase != HEAD and not parser.in_body:
            # Part of a head: its timeout runs from the first byte.
            self._watchdog.enter(HEAD, self._limits.head_timeout)

    def _pause_reading_if_full(self) -> None:
        if not self._reading_paused and self._parser.buffered > self._limits.read_high_water:
            self._reading_paused = True
            self._transport.pause_reading()

    # -- answering requests --------------------------------------------------

    def _respond(self, request: Request) -> bool:
        """Answer one request; True when the next one can be read right away."""
        route = self._router.resolve(request.method, request.path)
        if route.is_async:
            self._start_task(self._respond_later(cast(Awaitable[Result], route.handler(request)),
                                                 request))
            return False
        try:
            result = route.handler(request)
        except HTTPError as exc:
            return self._send(self._error_response(exc.status, exc.message, exc.headers), request)
        except Exception:
            logger.exception("handler for %s %s failed", request.method, request.path)
            return self._send(self._internal_error(), request)
        if type(result) is Response:
            return self._send(result, request)
        if isinstance(result, EventStream):
            self._start_task(self._stream(result, request))
            return False
        if isinstance(result, Awaitable):
            self._start_task(self._respond_later(result, request))
            return False
        logger.error("handler for %s %s returned %r", request.method, request.path, result)
        return self._send(self._internal_error(), request)

    def _start_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self._task = self._loop.create_task(coroutine)
        self._pause_reading_if_full()

    async def _respond_later(self, pending: Awaitable[Result], request: Request) -> None:
        """Run an async handler as this request's Task, then carry on with the connection."""
        result: Result
        try:
            result = await pending
        except HTTPError as exc:
            result = self._error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("handler for %s %s failed", request.method, request.path)
            result = self._internal_error()
        if isinstance(result, EventStream):
            await self._stream(result, request)
            return
        if type(result) is not Response:
            logger.error("handler for %s %s returned %r", request.method, request.path, result)
            result = self._internal_error()
        self._finish_task(self._send(result, request))

    async def _stream(self, stream: EventStream, request: Request) -> None:
        """Write an EventStream frame by frame, each as soon as the iterator yields it."""
        # HTTP/1.1 frames the stream in chunks; an HTTP/1.0 client learns the
        # stream ended when the connection closes (RFC 9112 §6.3 item 8).
        chunked = request.http_version == "1.1"
        connection = self._connection_field(request) if chunked else CLOSE
        events = stream.events
        framed = stream.framed
        flow = self._flow
        # The head goes out with the first frame, so that an error raised
        # before any event can still be an ordinary error response.
        head: bytes | None = encode_stream_head(stream, chunked, connection, self._cors_fields(request))
        failure: Response | None = None

        def ping() -> None:
            nonlocal head
            frame = encode_event(PING, chunked, framed=False)
            if head is not None:
                frame, head = head + frame, None
            self._write(frame)

        keepalive = Keepalive(self._clock, stream.keepalive, ping) \
            if stream.keepalive > 0 and stream.content_type == SSE else None
        try:
            async for payload in events:
                frame = encode_event(payload, chunked, framed)
                if head is not None:
                    frame = head + frame
                    head = None
                self._write(frame)
                if keepalive is not None:
                    keepalive.touch()
                if flow.must_wait:
                    await flow.drain()
        except ConnectionLost:
            return
        except HTTPError as exc:
            if head is None:
                logger.error("event stream for %s failed after it started: %r", request.path, exc)
                self._abort_response()
                return
            failure = self._error_response(exc.status, exc.message, exc.headers)
        except Exception:
            logger.exception("event stream for %s %s failed", request.method, request.path)
            if head is None:
                self._abort_response()
                return
            failure = self._internal_error()
        finally:
            if keepalive is not None:
                keepalive.stop()
            await _close_iterator(events)
        if failure is not None:
            self._finish_task(self._send(failure, request))
            return
        if head is not None:
            self._write(head)
        if chunked:
            self._write(LAST_CHUNK)
        if connection is CLOSE:
            self._close()
        self._finish_task(connection is not CLOSE)

    def _finish_task(self, keep_going: bool) -> None:
        self._task = None
        if not keep_going or self._closing:
            return
        if self._stopping:
            self._close()  # pipelined requests are dropped: the server is going away
            return
        if self._reading_paused:
            self._reading_paused = False
            self._transport.resume_reading()
        self._process()

    # -- writing -------------------------------------------------------------

    def _connection_field(self, request: Request) -> bytes:
        if not request.keep_alive or self._stopping:
            return CLOSE
        return KEEP_OPEN if request.http_version == "1.1" else KEEP_ALIVE_1_0

    def _send(self, response: Response, request: Request) -> bool:
        """Write a whole response; True when the connection stays open."""
        if self._closing:
            return False
        head_only = request.method == "HEAD"
        cors = self._cors_fields(request)
        if request.keep_alive and not self._stopping:
            connection = KEEP_OPEN if request.http_version == "1.1" else KEEP_ALIVE_1_0
            self._transport.write(encode_response(response, connection, head_only, cors))
            return True
        self._transport.write(encode_response(response, CLOSE, head_only, cors))
        self._close()
        return False

    def _cors_fields(self, request: Request) -> bytes:
        fixed = self._cors.fixed
        return fixed if fixed is not None else self._cors.fields(request.headers.get("origin"))

    def _write(self, data: bytes) -> None:
        if not self._closing:
            self._transport.write(data)

    def _error_response(
        self, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Response:
        try:
            body = self._error_body(status, message)
        except Exception:
            logger.exception("error_body failed for %d %r", status, message)
            body = default_error_body(status, message)
        return Response(status, body, JSON, headers)

    def _internal_error(self) -> Response:
        # The details are in the log; a traceback would leak internals.
        return self._error_response(500, "internal server error")

    def _fail(self, status: int, message: str) -> None:
        """Answer a broken or too slow request with an error, then close."""
        # (No request was parsed, so no Origin is known.)
        self._write(encode_response(self._error_response(status, message), CLOSE, cors=self._cors.fields(None)))
        self._close()

    def _abort_response(self) -> None:
        # Mid-stream the status is already sent; closing without the last
        # chunk is how HTTP/1.1 tells the client the response is incomplete.
        if not self._closing:
            self._closing = True
            self._transport.close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._watchdog.cancel()
        self._transport.close()

    def _on_timeout(self, phase: int) -> None:
        if self._closing:
            return
        if phase == IDLE:
            self._close()  # RFC 9112 §9.5: an idle connection may be closed at any time
        else:
            self._fail(408, "timed out waiting for the request")


async def _close_iterator(events: object) -> None:
    """Await ``events.aclose()`` when it has one, so a generator's finally runs."""
    aclose = getattr(events, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing an event stream failed")
