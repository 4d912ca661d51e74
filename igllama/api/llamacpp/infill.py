"""llama-server's `/infill`: fill-in-the-middle for code models, answered in `/completion`'s shape.

The prompt is the code model's own layout (igllama/engine/infill.py); a model
without fill-in-the-middle tokens is answered 501 `not_supported_error`, as
llama-server answers it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import parse_body
from igllama.api.llamacpp.completion import NativeCall, answer, parse_native
from igllama.api.llamacpp.errors import from_fim, stream_error
from igllama.engine import Engine, EngineError, ExtraFile
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App


async def infill(app: App, request: Request) -> Response | EventStream:
    started = time.perf_counter()

    def parse(data: dict[str, Any]) -> tuple[str, str, list[ExtraFile], NativeCall]:
        prefix, suffix = _text(data, "input_prefix"), _text(data, "input_suffix")
        extra = _extra_files(data.get("input_extra"))
        prefix += _text(data, "prompt")  # llama-server appends `prompt` to the prefix
        return prefix, suffix, extra, parse_native(data, app.defaults)

    prefix, suffix, extra, call = await parse_body(request.body, parse)

    async def start(engine: Engine) -> Response | EventStream:
        try:
            tokens = await engine.offload(engine.infill_prompt, prefix, suffix, extra)
        except EngineError as exc:
            raise (from_fim(exc) or from_engine(exc, "input_suffix")) from None
        return await answer(app, request, engine, call, [tokens], started, "input_suffix")

    return await app.run(request, call.model, call.stream, start, stream_error)


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise APIError(400, f"{name} must be a string", param=name)
    return value


def _extra_files(raw: Any) -> list[ExtraFile]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise APIError(400, 'input_extra must be an array of {"filename", "text"} objects', param="input_extra")
    files = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) \
                or not isinstance(item.get("filename", ""), str):
            raise APIError(400, f'input_extra[{i}] must be {{"filename": string, "text": string}}',
                           param="input_extra")
        files.append(ExtraFile(item.get("filename", ""), item["text"]))
    return files
