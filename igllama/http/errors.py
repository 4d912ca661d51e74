"""The errors of the HTTP layer, and the JSON body every error response carries."""

from __future__ import annotations

from collections.abc import Sequence

import orjson


class HTTPError(Exception):
    """Raised by a handler to answer with an error status instead of a response.

    The server turns it into a JSON error body (built by the server's
    ``error_body``) with ``status``; ``headers`` are added to that response
    (for example ``Allow`` on a 405). The connection stays open.
    """

    def __init__(
        self, status: int, message: str, *, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"an HTTPError needs a 4xx or 5xx status, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = tuple(headers)

    def __repr__(self) -> str:
        return f"HTTPError({self.status}, {self.message!r})"


class ParseError(Exception):
    """A request the parser refuses, with the status its answer must carry.

    After a ParseError the framing of the byte stream can no longer be
    trusted, so the connection is closed after the error response
    (RFC 9112 §9.6 lets a server close after any response).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"ParseError({self.status}, {self.message!r})"


class ListenError(OSError):
    """The server could not bind or listen; ``str()`` is one line for the user."""

    def __init__(self, message: str, error_number: int | None = None) -> None:
        super().__init__(message)
        self.errno = error_number


def default_error_body(status: int, message: str) -> bytes:
    """Build OpenAI's error shape, the one clients of an OpenAI-compatible server parse."""
    error_type = "invalid_request_error" if status < 500 else "server_error"
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": status}}
    )
