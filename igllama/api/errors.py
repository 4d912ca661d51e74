"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import orjson

from igllama.engine import (
    CapacityError,
    EngineError,
    EngineUnavailable,
    InputError,
    ModelLoadFailed,
    ModelNotFound,
    ShuttingDown,
)
from igllama.http import Response

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          501: "not_supported_error", 503: "unavailable_error"}  # (501: llama-server's name for it)


class APIError(Exception):
    """An error a client should see, with the field it is about (`param`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after  # seconds, sent as Retry-After (RFC 9110 §10.2.3)

    @property
    def body(self) -> bytes:
        return _body(self.status, self.message, self.param, self.code)

    def response(self, body: bytes | None = None) -> Response:
        """The error as a response: OpenAI's body unless a dialect gives its own."""
        headers = [(b"Retry-After", str(self.retry_after).encode())] if self.retry_after is not None else []
        return Response(self.status, self.body if body is None else body, headers=headers)


# How long a client told to come back (503) should wait, in seconds.
RETRY_AFTER = 1


def from_engine(exc: EngineError, param: str) -> APIError:
    """The API's answer to an engine error: bad input 400 (about `param`),
    no capacity or no engine 503 with Retry-After, an unknown model 404, anything else 500."""
    if isinstance(exc, ModelNotFound):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ModelLoadFailed):
        return APIError(500, str(exc), param="model", code="model_load_failed")
    if isinstance(exc, InputError):
        return APIError(400, str(exc), param=getattr(exc, "param", None) or param)
    if isinstance(exc, CapacityError):
        return APIError(503, str(exc), code="server_busy", retry_after=RETRY_AFTER)
    if isinstance(exc, ShuttingDown):
        return APIError(503, str(exc), code="shutting_down", retry_after=RETRY_AFTER)
    if isinstance(exc, EngineUnavailable):
        return APIError(503, str(exc), code="engine_unavailable", retry_after=RETRY_AFTER)
    return APIError(500, f"{exc}; see the server log")


def error_type(status: int) -> str:
    """The `type` of an error with this status (OpenAI's names; llama-server uses the same)."""
    return _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def error_body(status: int, message: str) -> bytes:
    """The body of an error the HTTP layer itself produces (404, 405, 413, ...)."""
    return _body(status, message, None, None)


def _body(status: int, message: str, param: str | None, code: str | int | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": error_type(status), "param": param,
                   "code": code if code is not None else status}}
    )
