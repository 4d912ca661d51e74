"""llama-server's error shape, for the routes only it has (`/slots/{id}`, `/lora-adapters`):
`{"error": {"code": 400, "message": "...", "type": "invalid_request_error"}}`."""

from __future__ import annotations

import orjson

from igllama.api.errors import APIError
from igllama.http import Response

# llama-server's error types by status (its tools/server `error_type`).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          501: "not_supported_error", 503: "unavailable_error"}


def llama_server_error(error: APIError) -> Response:
    error_type = _TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "server_error")
    body = orjson.dumps({"error": {"code": error.status, "message": error.message, "type": error_type}})
    return error.response(body)
