"""llama-server's utility endpoints: `/tokenize`, `/detokenize`, `/apply-template`, `/props`.

Tooling (editors counting tokens, prompt debuggers, UIs reading the context
size) reads these in llama-server's shapes. `/tokenize` and `/detokenize` also
answer vLLM's field names, and `/tokenizer_info` is vLLM's: together they are
what lm-eval's `tokenizer_backend=remote` asks of a server, so that it can
count context tokens for loglikelihood tasks with the served model's own tokenizer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import (
    boolean,
    is_int,
    model_name,
    parse_body,
    parse_json,
    query_value,
    sampling_params,
)
from igllama.api.llamacpp.settings import generation_params
from igllama.api.openai.chat_replies import BUILD_INFO
from igllama.api.openai.chat_requests import parse_chat
from igllama.engine import EngineError
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App
    from igllama.engine import Engine


def routes(app: App) -> None:
    app.add("POST", "/tokenize", lambda request: tokenize(app, request))
    app.add("POST", "/detokenize", lambda request: detokenize(app, request))
    app.add("POST", "/apply-template", lambda request: apply_template(app, request))
    app.add("GET", "/props", lambda request: props(app, request))
    app.add("GET", "/tokenizer_info", lambda request: tokenizer_info(app, request))


async def tokenize(app: App, request: Request) -> Response:
    data = parse_json(request.body)
    vllm = "content" not in data and "prompt" in data  # vLLM's names: prompt, add_special_tokens
    field = "prompt" if vllm else "content"
    content = data.get(field)
    if not isinstance(content, str):
        raise APIError(400, f"{field} must be a string", param=field)
    add_special = boolean(data, "add_special_tokens" if vllm else "add_special", vllm)  # (vLLM's default: add)
    engine = await app.engine(model_name(data))
    try:
        tokens = await engine.offload(engine.tokenize, content, add_special, boolean(data, "parse_special", True),
                                      field)
    except EngineError as exc:
        raise from_engine(exc, field) from None
    if vllm:
        return Response.json(200, {"count": len(tokens), "max_model_len": engine.n_ctx, "tokens": tokens})
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
    text = await engine.offload(_text, engine, tokens)
    return Response.json(200, {"content": text, "prompt": text})  # (llama-server's name, vLLM's)


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
        "params": generation_params(sampling_params({}, app.defaults), app.defaults.max_tokens),
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


async def tokenizer_info(app: App, request: Request) -> Response:
    """vLLM's tokenizer description: its special tokens' text and the chat template."""
    requested = query_value(request.query, "model")
    engine = await app.engine(requested)
    model = engine.model
    return Response.json(200, {
        "tokenizer_class": "llama.cpp",
        "bos_token": model.bos_text or None,
        "eos_token": model.eos_text or None,
        "pad_token": None,
        "chat_template": engine.template.source or None,
        "model_max_length": engine.n_ctx,
    })
