"""`POST /slots/{id}?action=save|restore|erase`: a slot's KV cache to and from files in the
directory `--slot-save-path` names, in llama-server's request and reply shapes.

A long system prompt's KV cache, saved once, comes back after a restart without being
prefilled again: restore it, and a request whose prompt starts with the same tokens
reuses it through the prefix cache (`usage.prompt_tokens_details.cached_tokens`).

A file name stays inside the directory: no path separators, no `..`, no control
characters, at most 255 bytes, and never a symbolic link (one planted in the
directory would lead outside it). Without `--slot-save-path` every action is a 501,
as in llama-server; a slot that is serving a request is a 409 (llama-server
waits for it instead).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import parse_json, query_value
from igllama.api.llamacpp.errors import native_response
from igllama.engine import EngineError
from igllama.engine.slot_files import ACTIONS, SlotBusy, SlotOutcome
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

MAX_FILENAME_BYTES = 255  # a file name's limit on common filesystems (ext4, APFS, NTFS in UTF-16 units)
_SLOT_ID = re.compile(r"[0-9]{1,6}")
# Path separators (both systems'), a drive's colon, NUL and the other control characters.
_FORBIDDEN = re.compile(r"[/\\:\x00-\x1f\x7f]")


def routes(app: App) -> None:
    app.add("POST", "/slots/{id}", lambda request: slot_action(app, request), native_response)


async def slot_action(app: App, request: Request) -> Response:
    directory = app.settings.slot_save_path
    if not directory:
        raise APIError(501, "This server does not support slots action. Start it with `--slot-save-path`")
    raw_id = (request.path_params or {}).get("id", "")
    if _SLOT_ID.fullmatch(raw_id) is None:
        raise APIError(400, f"Invalid slot ID {raw_id[:16]!r}: give a slot's number, as GET /slots lists them")
    slot_id = int(raw_id)
    action = query_value(request.query, "action")
    if action not in ACTIONS:
        raise APIError(400, f"Invalid action {action!r}: use ?action=save, restore or erase")
    engine = await app.engine(query_value(request.query, "model"))
    if slot_id >= engine.config.n_slots:
        raise APIError(400, f"Invalid slot ID {slot_id}: this server has slots 0..{engine.config.n_slots - 1}")
    filename, path = "", ""
    if action != "erase":
        filename = _filename(parse_json(request.body).get("filename"))
        path = os.path.join(directory, filename)
        if os.path.islink(path):
            raise APIError(400, f"Invalid filename {filename!r}: a symbolic link", param="filename")
        if action == "save":
            os.makedirs(directory, exist_ok=True)  # (llama-server creates it at start)
    try:
        outcome = await engine.slot_file(action, slot_id, path)
    except SlotBusy as exc:
        raise APIError(409, str(exc)) from None
    except EngineError as exc:
        raise from_engine(exc, "filename") from None
    return Response.json(200, _reply(action, slot_id, filename, outcome))


def _filename(name: Any) -> str:
    """A name for a file directly inside the save directory, or a 400 saying why not."""
    if not isinstance(name, str) or not name:
        raise APIError(400, "filename must be a non-empty string, e.g. {\"filename\": \"prompt.bin\"}",
                       param="filename")
    if len(name.encode("utf-8", errors="replace")) > MAX_FILENAME_BYTES:
        raise APIError(400, f"Invalid filename: longer than {MAX_FILENAME_BYTES} bytes", param="filename")
    if _FORBIDDEN.search(name) or ".." in name or name == "." or name != name.strip():
        raise APIError(400, f"Invalid filename {name[:64]!r}: a plain file name, without path separators, "
                       "'..', control characters or surrounding spaces", param="filename")
    return name


def _reply(action: str, slot_id: int, filename: str, outcome: SlotOutcome) -> dict[str, Any]:
    ms = round(outcome.ms, 3)
    if action == "save":
        return {"id_slot": slot_id, "filename": filename, "n_saved": outcome.n_tokens,
                "n_written": outcome.n_bytes, "timings": {"save_ms": ms}}
    if action == "restore":
        return {"id_slot": slot_id, "filename": filename, "n_restored": outcome.n_tokens,
                "n_read": outcome.n_bytes, "timings": {"restore_ms": ms}}
    return {"id_slot": slot_id, "n_erased": outcome.n_tokens}
