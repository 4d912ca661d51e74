"""llama-server's utility endpoints: `/tokenize`, `/detokenize`, `/apply-template`, `/props`.

Tooling (editors counting tokens, prompt debuggers, UIs reading the context
size) reads these in llama-server's shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import boolean, is_int, model_name, parse_body, parse_json, query_value
from igllama.api.llamacpp.settings import generation_params
from igllama.api.openai.chat_replies import BUILD_INFO
from igllama.api.openai.chat_requests import parse_chat
from igllama.engine import EngineError, SamplingParams
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App
    from igllama.engine import Engine


def routes(app: App) -> None:
    app.add("POST", "/tokenize", lambda request: tokenize(app, request))
    app.add("POST", "/detokenize", lambda request: detokenize(app, request))
    app.add("POST", "/apply-template", lambda request: apply_template(app, request))
    app.add("GET", "/props", lambda request: props(app, request))


async def tokenize(app: App, request: Request) -> Response:
    data = parse_json(request.body)
    content = data.get("content")
    if not isinstance(content, str):
        raise APIError(400, "content must be a string", param="content")
    engine = await app.engine(model_name(data))
    try:
        tokens = await engine.offload(engine.tokenize, content, boolean(data, "add_special", False),
                                      boolean(data, "parse_special", True), "content")
    except EngineError as exc:
        raise from_engine(exc, "content") from None
    if not boolean(data, "with_pieces", False):
        return Response.json(200, {"tokens": tokens})
    return Response.json(200, {"tokens": await engine.offload(_pieces, engine, tokens)})


def _pieces(engine: Engine, tokens: list[int]) -> list[dict[str, Any]]:
    pieces = []
    for token in tokens:
        raw = engine.model.token_text(token)
        try:
            piece: str | list[int] = raw.decode("utf-8")
        except UnicodeDecodeError:
            piece = list(raw)  # part of a character: its bytes, as llama-server gives them
        pieces.append({"id": token, "piece": piece})
    return pieces


async def detokenize(app: App, request: Request) -> Response:
    data = parse_json(request.body)
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(is_int(t) for t in tokens):
        raise APIError(400, "tokens must be an array of token ids", param="tokens")
    engine = await app.engine(model_name(data))
    return Response.json(200, {"content": await engine.offload(_text, engine, tokens)})


def _text(engine: Engine, tokens: list[int]) -> str:
    bad = [t for t in tokens if not 0 <= t < engine.model.n_vocab]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0 to {engine.model.n_vocab - 1})",
                       param="tokens")
    return engine.model.detokenize(tokens)


async def apply_template(app: App, request: Request) -> Response:
    """The prompt the chat template makes of an OpenAI chat request (tools included)."""
    call = await parse_body(request.body, lambda data: parse_chat(data, app.defaults))
    engine = await app.engine(call.model)
    try:
        prompt = await engine.offload(engine.render, call.request)
    except EngineError as exc:
        raise from_engine(exc, "messages") from None
    return Response.json(200, {"prompt": prompt})


async def props(app: App, request: Request) -> Response:
    """The default model's settings, or those of `?model=NAME` (loaded first)."""
    requested = query_value(request.query, "model")
    engine = await app.engine(requested)
    config = engine.config
    settings: dict[str, Any] = {
        "n_ctx": slot_n_ctx(engine),
        "params": generation_params(SamplingParams(temperature=app.defaults.temperature), app.defaults.max_tokens),
    }
    return Response.json(200, {
        "default_generation_settings": settings,
        "total_slots": config.n_slots,
        "model_alias": app.model(requested).name,
        "model_path": engine.model.path,
        "chat_template": engine.template.source or engine.template.description,
        "modalities": {"vision": False, "video": False, "audio": False},
        "endpoint_slots": app.settings.slots,
        "endpoint_props": False,  # (POST /props is refused: settings change by restarting)
        "endpoint_metrics": app.settings.metrics,
        "build_info": BUILD_INFO,
    })


def slot_n_ctx(engine: Engine) -> int:
    """A slot's context as llama-server reports it: the context divided among the slots
    (`-c 512 -np 2`: 256). igllama's slots share one KV pool, so a lone long request
    may use more; this is what each of them can count on when all are busy."""
    return engine.n_ctx // max(engine.config.n_slots, 1)
