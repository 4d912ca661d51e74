"""llama-server's error shape for its own routes: `{"error": {"code", "message", "type"}}`,
`code` being the HTTP status (OpenAI's routes add `param` and a string `code`)."""

from __future__ import annotations

import orjson

from igllama.api.errors import APIError, error_type
from igllama.engine import EngineError, NoFimError
from igllama.http import Response


def native_body(error: APIError) -> bytes:
    """Without a `param` key, the message names the field itself (llama-server's say "Field 'x': ...")."""
    message = error.message
    if error.param and error.param not in message:
        message = f"{error.param}: {message}"
    return orjson.dumps({"error": {"code": error.status, "message": message, "type": error_type(error.status)}})


def native_response(error: APIError) -> Response:
    """An `APIError` as llama-server writes its errors (the `errors` writer of its routes)."""
    return error.response(native_body(error))


def stream_error(error: APIError) -> list[bytes]:
    """A failure once a stream has begun: one `data:` frame with the error, as llama-server sends it."""
    return [native_body(error)]


def not_supported(message: str) -> APIError:
    """What llama-server answers for a feature it was not built or started with: 501."""
    return APIError(501, message, code="not_supported")


def from_fim(exc: EngineError) -> APIError | None:
    """A model without fill-in-the-middle tokens: 501, as llama-server answers /infill then."""
    if isinstance(exc, NoFimError):
        return not_supported(str(exc))
    return None
