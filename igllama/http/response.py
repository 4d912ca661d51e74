"""Responses and their bytes: status lines, Date, CORS, whole bodies and SSE frames.

Everything constant is computed once at import, so serialising a response
on the hot path is a lookup and one ``bytes.join``.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

import orjson

from .cors import ANY_ORIGIN

JSON: Final = b"application/json"

# Sent on every response, errors included, so that a browser page on any
# origin can call the API (the Fetch standard's CORS protocol); a server with
# a narrower CorsPolicy (http/cors.py) passes its own fields per response.
CORS_HEADERS: Final = ANY_ORIGIN.fields(None)
_COMMON: Final = b"Server: igllama\r\n"

# The value of the Connection field a response needs (RFC 9112 §9.3, and
# RFC 9112 §C.2.2 for the keep-alive an HTTP/1.0 client must see).
KEEP_OPEN: Final = b""
CLOSE: Final = b"Connection: close\r\n"
KEEP_ALIVE_1_0: Final = b"Connection: keep-alive\r\n"

_STREAM_FIELDS: Final = (
    b"Cache-Control: no-cache\r\n"
    # Reverse proxies such as nginx buffer responses unless told not to,
    # which would hold tokens back from the client.
    b"X-Accel-Buffering: no\r\n"
)
SSE: Final = b"text/event-stream"
NDJSON: Final = b"application/x-ndjson"
_CHUNKED: Final = b"Transfer-Encoding: chunked\r\n"
LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

# RFC 9110 §2.5: we answer in the highest version we implement whose major
# version the client speaks, so HTTP/1.0 clients get "HTTP/1.1" too.
_STATUS_LINES: Final = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
    for status in HTTPStatus
}

# RFC 9110 §5.1 field-name token, §5.5 field-value without CR, LF or NUL.
_FIELD_NAME: Final = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(rb"[^\x00\r\n]*")


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:  # an unregistered code: the reason phrase may be empty (RFC 9112 §4)
        line = b"HTTP/1.1 %d \r\n" % status
    return line


# The Date field (RFC 9110 §6.6.1) has a resolution of one second, so it is
# formatted at most once a second.
_date_second = -1
_date_field = b""


def date_line() -> bytes:
    """The current Date field, CRLF included."""
    second = int(time.time())
    if second != _date_second:
        _format_date(second)
    return _date_field


def _format_date(second: int) -> None:
    global _date_second, _date_field
    _date_field = b"Date: " + formatdate(second, usegmt=True).encode() + b"\r\n"
    _date_second = second


def check_header_fields(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Refuse header fields that would corrupt the response (CR/LF injection)."""
    for name, value in headers:
        if _FIELD_NAME.fullmatch(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise ValueError(f"invalid header value for {name!r}: CR, LF or NUL")


@dataclass(frozen=True, slots=True)
class Response:
    """A response whose whole body is known, sent with a Content-Length.

    ``headers`` are extra fields as ``(name, value)`` bytes; Date, CORS,
    Content-Type, Content-Length and Connection are added by the server.
    An empty ``content_type`` sends no Content-Type field.
    """

    status: int
    body: bytes = b""
    content_type: bytes = JSON
    headers: Sequence[tuple[bytes, bytes]] = ()
    # Status line and every field that does not change between sends; a
    # response object returned again and again is serialised only once.
    _fixed_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        status = self.status
        if not 200 <= status <= 599:
            raise ValueError(f"a final response needs a 2xx-5xx status, not {status}")
        # RFC 9110 §15.3.5, §15.4.5: 204 and 304 never carry content.
        if self.body and status in (204, 304):
            raise ValueError(f"a {status} response cannot have a body")
        if self.headers:
            check_header_fields(self.headers)
        parts = [_status_line(status), _COMMON]
        if self.content_type:
            parts += (b"Content-Type: ", self.content_type, b"\r\n")
        # RFC 9110 §8.6: no Content-Length in a 204 (and a 304 has no content).
        if status != 204 and status != 304:
            parts.append(b"Content-Length: %d\r\n" % len(self.body))
        for name, value in self.headers:
            parts += (name, b": ", value, b"\r\n")
        object.__setattr__(self, "_fixed_head", b"".join(parts))

    @classmethod
    def json(
        cls, status: int, obj: Any, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> Response:
        """A JSON response, serialised with orjson."""
        return cls(status, orjson.dumps(obj), JSON, headers)


@dataclass(frozen=True, slots=True)
class EventStream:
    """A Server-Sent Events response (status 200, ``text/event-stream``).

    Each payload ``events`` yields is already encoded (typically one JSON
    document); it is framed as ``data: <payload>\\n\\n`` and written at once.
    The response ends when the iterator ends. If the client goes away the
    server stops iterating and awaits ``events.aclose()`` when it exists, so
    an async generator's ``finally`` runs. An ``HTTPError`` raised before the
    first payload becomes an ordinary error response, because the status line
    is only sent together with the first frame.
    """

    events: AsyncIterator[bytes]
    headers: Sequence[tuple[bytes, bytes]] = ()
    # SSE frames each payload as `data: ...`; any other type (NDJSON, or SSE
    # with named events the caller writes itself) sends payloads as they are.
    content_type: bytes = SSE
    framed: bool = True
    # SSE only: after this many seconds without a frame the server sends a
    # `: ping` comment (which clients ignore), so that a proxy's idle timeout
    # does not cut a stream that waits in a queue or prefills a long prompt.
    # The status line goes out with the first ping. 0: never.
    keepalive: float = 0.0

    def __post_init__(self) -> None:
        if self.headers:
            check_header_fields(self.headers)


def encode_response(response: Response, connection: bytes, head_only: bool = False,
                    cors: bytes = CORS_HEADERS) -> bytes:
    """The bytes of a whole response; ``connection`` is CLOSE, KEEP_ALIVE_1_0 or KEEP_OPEN.
    ``head_only`` (a HEAD request) keeps the Content-Length and leaves the body out;
    ``cors``: the CORS fields for the request's origin (``CorsPolicy.fields``)."""
    # Field order carries no meaning between different names (RFC 9110
    # §5.3), so the fields that change per send come last. (date_line()
    # inlined: this runs once per response.)
    second = int(time.time())
    if second != _date_second:
        _format_date(second)
    return b"".join((response._fixed_head, cors, _date_field, connection, b"\r\n",
                     b"" if head_only else response.body))


def encode_stream_head(stream: EventStream, chunked: bool, connection: bytes, cors: bytes = CORS_HEADERS) -> bytes:
    """The head of an SSE response; ``chunked`` frames the body (HTTP/1.1 only)."""
    parts = [_status_line(200), date_line(), _COMMON, cors, b"Content-Type: ", stream.content_type, b"\r\n",
             _STREAM_FIELDS]
    if chunked:
        parts.append(_CHUNKED)
    for name, value in stream.headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (connection, b"\r\n")
    return b"".join(parts)


# An SSE comment line (WHATWG HTML §9.2.6: a line starting with a colon is ignored).
PING = b": ping\n\n"


def encode_event(payload: bytes, chunked: bool, framed: bool = True) -> bytes:
    """One SSE frame for ``payload`` (the payload itself unless ``framed``), as one chunk when ``chunked``."""
    if not framed:
        frame = payload
    elif b"\n" in payload or b"\r" in payload:
        # The SSE format ends a field at any line break, so a multi-line
        # payload must become one "data:" line per line of text.
        frame = b"".join([b"data: " + line + b"\n" for line in payload.splitlines()]) + b"\n"
    else:
        frame = b"data: " + payload + b"\n\n"
    if chunked:
        # RFC 9112 §7.1: chunk-size in hex, CRLF, data, CRLF.
        return b"%x\r\n%s\r\n" % (len(frame), frame)
    return frame
