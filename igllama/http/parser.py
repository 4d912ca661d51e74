"""A sans-IO HTTP/1.1 request parser: bytes in, events out.

Nothing here touches a socket or an event loop, so every rule is tested in
memory. The caller feeds whatever bytes arrived and pulls events until it
gets a ``NeedData``:

* ``HeadReceived``: the head of a request that has a body (so the caller can
  send ``100 Continue`` and start the body timer);
* ``Request``: a complete request, body included;
* ``NEED_DATA``: part of a request is in, the rest must be fed;
* ``IDLE``: nothing is buffered; the next request has not begun.

``NEED_DATA`` and ``IDLE`` are the two instances of ``NeedData``: the
connection needs to tell them apart to pick the head or the idle timeout.

Bytes after one complete request stay buffered: they are the next
(pipelined) request, returned by a later ``next_event()`` call. A violation
raises ``ParseError`` carrying its status; after it the parser is dead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import ParseError
from .head import MAX_LENGTH_DIGITS, TOKEN, Head, check_field_lines, parse_head
from .message import Request

# RFC 9112 §7.1: chunk-size [ chunk-ext ] CRLF, with chunk-ext =
# *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
# Trailing whitespace before CRLF is tolerated, as most servers do.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_TOKEN_B = TOKEN.encode()
_CHUNK_LINE: Final = re.compile(
    rb"([0-9A-Fa-f]+)(?:[ \t]*;[ \t]*" + _TOKEN_B
    + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN_B + rb"|" + _QUOTED + rb"))?)*[ \t]*"
)
_MAX_CHUNK_LINE: Final = 4096

_HEAD, _BODY_LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _TRAILERS, _DEAD = range(6)


class NeedData:
    """The event meaning: feed more bytes, nothing else can be parsed yet."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = NeedData("NEED_DATA")
IDLE: Final = NeedData("IDLE")


@dataclass(frozen=True, slots=True)
class HeadReceived:
    """The head of a request with a body; its ``Request`` follows once the body is in."""

    method: str
    target: str
    expects_continue: bool
    content_length: int | None
    """None when the body is chunked."""


Event = Request | HeadReceived | NeedData


class RequestParser:
    """Parses a stream of requests from one connection."""

    __slots__ = (
        "_body",
        "_buffer",
        "_error",
        "_max_body",
        "_max_head",
        "_pending",
        "_remaining",
        "_scan_from",
        "_state",
    )

    def __init__(self, max_head_bytes: int = 16 * 1024,
                 max_body_bytes: int = 16 * 1024 * 1024) -> None:
        self._buffer = bytearray()
        self._state = _HEAD
        # Where to resume looking for the end of the head, so a head that
        # trickles in byte by byte is not rescanned from the start each time.
        self._scan_from = 0
        self._max_head = max_head_bytes
        self._max_body = max_body_bytes
        self._pending: Head | None = None
        self._remaining = 0
        self._body = bytearray()
        self._error: ParseError | None = None

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet turned into events."""
        return len(self._buffer)

    @property
    def idle(self) -> bool:
        """True between requests: no byte of the next one received yet."""
        return not self._buffer and self._state == _HEAD

    @property
    def in_body(self) -> bool:
        """True between a HeadReceived and its Request."""
        return _HEAD < self._state < _DEAD

    def next_event(self) -> Event:
        """Parse as far as the buffered bytes allow and return the next event."""
        state = self._state
        if state == _HEAD and not self._buffer:
            return IDLE  # between requests: the most common answer, kept cheap
        try:
            if state == _HEAD:
                return self._next_head()
            if state == _BODY_LENGTH:
                return self._next_length_body()
            if state in (_CHUNK_SIZE, _CHUNK_DATA):
                return self._next_chunks()
            if state == _TRAILERS:
                return self._next_trailers()
        except ParseError as exc:
            self._state = _DEAD
            self._error = exc
            raise
        if self._error is None:  # pragma: no cover - every state is handled above
            raise RuntimeError(f"parser in unknown state {state}")
        raise self._error

    # -- the head -----------------------------------------------------------

    def _next_head(self) -> Event:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n", self._scan_from)
        if end <= 0:
            return self._incomplete_head()
        if end + 4 > self._max_head:
            raise ParseError(431, "request header section too large")
        # ISO-8859-1 maps every byte to one character: a lossless decode in C,
        # after which all matching happens on str (RFC 9110 §5.5 obs-text).
        text = buffer[:end].decode("latin-1")
        del buffer[: end + 4]
        self._scan_from = 0
        head = parse_head(text)
        content_length = head.content_length
        if content_length == 0:
            return Request(head.method, head.target, head.path, head.query, head.headers,
                           b"", head.http_version, head.keep_alive)
        if content_length is None:
            self._state = _CHUNK_SIZE
        elif content_length > self._max_body:
            # Refused before the body is read: the client may still be
            # waiting for 100 Continue (RFC 9110 §10.1.1).
            raise ParseError(413, "request body too large")
        else:
            self._state = _BODY_LENGTH
            self._remaining = content_length
        self._pending = head
        return HeadReceived(head.method, head.target, head.expects_continue, content_length)

    def _incomplete_head(self) -> Event:
        buffer = self._buffer
        # RFC 9112 §2.2: ignore empty lines received before the request-line
        # (some clients send an extra CRLF after a POST body).
        if buffer.startswith(b"\r\n"):
            while buffer.startswith(b"\r\n"):
                del buffer[:2]
            self._scan_from = 0
            return self._next_head() if buffer else IDLE
        if len(buffer) > self._max_head:
            raise ParseError(431, "request header section too large")
        # A head ended by bare LFs would otherwise wait for the timeout;
        # RFC 9112 §2.2 lets us refuse bare LF as a line terminator.
        if buffer.find(b"\n\n", self._scan_from) >= 0:
            raise ParseError(400, "malformed request head: bare LF line ending")
        self._scan_from = max(0, len(buffer) - 3)
        return NEED_DATA

    # -- bodies -------------------------------------------------------------

    def _next_length_body(self) -> Event:
        size = self._remaining
        buffer = self._buffer
        if len(buffer) < size:
            return NEED_DATA
        body = bytes(buffer[:size])
        del buffer[:size]
        return self._complete(body)

    def _next_chunks(self) -> Event:
        buffer = self._buffer
        while True:
            if self._state == _CHUNK_DATA:
                size = self._remaining
                if len(buffer) < size + 2:
                    return NEED_DATA
                if buffer[size : size + 2] != b"\r\n":
                    raise ParseError(400, "malformed chunked body: chunk data not followed by CRLF")
                self._body += buffer[:size]
                del buffer[: size + 2]
                self._state = _CHUNK_SIZE
                continue
            end = buffer.find(b"\r\n", 0, _MAX_CHUNK_LINE + 2)
            if end < 0:
                if len(buffer) > _MAX_CHUNK_LINE:
                    raise ParseError(400, "malformed chunked body: chunk header too long")
                return NEED_DATA
            header = _CHUNK_LINE.fullmatch(buffer, 0, end)
            if header is None:
                raise ParseError(400, "malformed chunked body: invalid chunk header")
            digits = header.group(1)
            size = int(digits, 16) if len(digits) <= MAX_LENGTH_DIGITS else self._max_body + 1
            del buffer[: end + 2]
            if size == 0:
                self._state = _TRAILERS
                return self._next_trailers()
            if len(self._body) + size > self._max_body:
                raise ParseError(413, "request body too large")
            self._remaining = size
            self._state = _CHUNK_DATA

    def _next_trailers(self) -> Event:
        # RFC 9112 §7.1.2: a trailer section may follow the last chunk; we
        # check its syntax and size like the head's, then discard it.
        buffer = self._buffer
        if len(buffer) < 2:
            return NEED_DATA
        if buffer[:2] == b"\r\n":
            del buffer[:2]
        else:
            end = buffer.find(b"\r\n\r\n")
            if end < 0 or end + 4 > self._max_head:
                if len(buffer) > self._max_head:
                    raise ParseError(431, "chunked trailer section too large")
                return NEED_DATA
            check_field_lines(buffer[:end].decode("latin-1"))
            del buffer[: end + 4]
        body = bytes(self._body)
        self._body.clear()
        return self._complete(body)

    def _complete(self, body: bytes) -> Request:
        head = self._pending
        if head is None:  # pragma: no cover - a body state always has a head
            raise RuntimeError("body without a head")
        self._pending = None
        self._state = _HEAD
        return Request(
            head.method, head.target, head.path, head.query, head.headers,
            body, head.http_version, head.keep_alive,
        )
