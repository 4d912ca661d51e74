"""LoRA adapters over HTTP, as llama-server serves them: `GET /lora-adapters` lists the
loaded adapters with their global scales, `POST /lora-adapters` sets those scales, and a
completion's `lora` field (`[{"id": 0, "scale": 0.5}]`) sets its own.

As in llama-server, a list names scales for the adapters it lists and 0 for the others,
and an absent or empty `lora` field means the global scales. Unlike llama-server, an id
that names no adapter, or a scale that is not a finite number, is a 400 rather than
ignored (llama-server drops such an entry silently, which hides a client's typo).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import is_int, query_value
from igllama.api.llamacpp.errors import native_response
from igllama.engine import EngineError
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

# More entries than any server loads adapters: a list beyond it is refused before it is read.
MAX_ENTRIES = 256
_MAX_BODY = 64 * 1024


def routes(app: App) -> None:
    app.add("GET", "/lora-adapters", lambda request: list_adapters(app, request), native_response)
    app.add("POST", "/lora-adapters", lambda request: set_adapters(app, request), native_response)


async def list_adapters(app: App, request: Request) -> Response:
    engine = await app.engine(query_value(request.query, "model"))
    adapters = engine.adapters
    return Response.json(200, [
        {"id": i, "path": path, "scale": scale, "task_name": "", "prompt_prefix": ""}
        for i, (path, scale) in enumerate(zip(adapters.paths, adapters.scales))
    ])


async def set_adapters(app: App, request: Request) -> Response:
    if len(request.body) > _MAX_BODY:
        raise APIError(400, f"the request body is larger than {_MAX_BODY} bytes")
    try:
        data = orjson.loads(request.body) if request.body else None
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise APIError(400, "Request body must be an array of {\"id\", \"scale\"} objects")
    entries = lora_entries(data, "the request body")
    engine = await app.engine(query_value(request.query, "model"))
    try:
        engine.adapters.set_scales(entries)
    except EngineError as exc:
        raise from_engine(exc, "lora") from None
    return Response.json(200, {"success": True})


def lora_field(data: dict[str, Any]) -> tuple[tuple[int, float], ...] | None:
    """A completion's `lora` field as (id, scale) pairs; None when absent. The ids are
    checked against the loaded adapters when the request is submitted (engine/lora.py)."""
    raw = data.get("lora")
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise APIError(400, "lora must be an array of objects with 'id' and 'scale' fields", param="lora")
    return lora_entries(raw, "lora")


def lora_entries(raw: list[Any], what: str) -> tuple[tuple[int, float], ...]:
    if len(raw) > MAX_ENTRIES:
        raise APIError(400, f"{what} lists {len(raw)} adapters; at most {MAX_ENTRIES}", param="lora")
    entries = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not is_int(entry.get("id")):
            raise APIError(400, f"{what}[{i}] must be an object with an integer 'id' and a 'scale'", param="lora")
        scale = entry.get("scale", 0.0)  # (llama-server's default)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise APIError(400, f"{what}[{i}].scale must be a number, not {scale!r}", param="lora")
        entries.append((int(entry["id"]), float(scale)))
    return tuple(entries)
