"""OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import orjson

from igllama.http import Response

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error", 503: "unavailable_error"}


class APIError(Exception):
    """An error a client should see, with the field it is about (`param`)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def response(self) -> Response:
        return Response(self.status, _body(self.status, self.message, self.param, self.code))


def error_body(status: int, message: str) -> bytes:
    """The body of an error the HTTP layer itself produces (404, 405, 413, ...)."""
    return _body(status, message, None, None)


def _body(status: int, message: str, param: str | None, code: str | int | None) -> bytes:
    error_type = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": code if code is not None else status}}
    )
