"""Ollama's native API: `/api/chat`, `/api/generate`, the model listings, embeddings, and `/`'s answer.

Ollama streams by default, one JSON object a line (NDJSON), and ends with an
object that has `done: true`, the reason and the counts and durations (in
nanoseconds). Errors are `{"error": "..."}`. Everything runs on the same
engine as the other dialects.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.choices import Outcome, Reply, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import (
    Defaults,
    boolean,
    integer,
    model_name,
    number,
    parse_body,
    parse_json,
    stop_strings,
)
from igllama.api.output import ANY_OBJECT, schema_grammar
from igllama.api.tools import parse_tools
from igllama.engine import (
    MAX_EMBEDDING_INPUTS,
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineError,
    Finished,
    GenerationStream,
    OutputSchema,
    SamplingParams,
    TextDelta,
    ToolCall,
)
from igllama.engine.model import file_facts
from igllama.http import NDJSON, EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App, Listed
    from igllama.engine.model import Model, ModelFacts

# The Ollama release whose API this follows; clients read it to decide what to send.
OLLAMA_API_VERSION = "0.9.0"
# What `GET /` and `HEAD /` answer Ollama's clients (`page.root` routes `/`: browsers get the chat page).
# Vary: the same URL answers differently by Accept (RFC 9110 §12.5.5).
RUNNING = Response(200, b"Ollama is running", b"text/plain; charset=utf-8", ((b"Vary", b"Accept"),))


def routes(app: App) -> None:
    app.add("POST", "/api/chat", lambda request: chat(app, request), error_response)
    app.add("POST", "/api/generate", lambda request: generate(app, request), error_response)
    app.add("GET", "/api/tags", lambda request: tags(app, request), error_response)
    app.add("GET", "/api/ps", lambda request: running(app, request), error_response)
    app.add("POST", "/api/show", lambda request: show(app, request), error_response)
    app.add("GET", "/api/version", lambda request: version(app, request), error_response)
    app.add("POST", "/api/embed", lambda request: embed(app, request), error_response)
    app.add("POST", "/api/embeddings", lambda request: embeddings(app, request), error_response)


def error_response(error: APIError) -> Response:
    return error.response(orjson.dumps({"error": error.message}))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- requests


def _options(data: dict[str, Any], defaults: Defaults) -> tuple[SamplingParams, int, tuple[str, ...]]:
    """Sampling, the token limit and stop strings from Ollama's `options`."""
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise APIError(400, "options must be an object", param="options")
    sampling = SamplingParams(
        temperature=number(options, "temperature", defaults.temperature, 0.0, 2.0),
        top_k=integer(options, "top_k", 40, 0),
        top_p=number(options, "top_p", 0.9, 0.0, 1.0),
        min_p=number(options, "min_p", 0.0, 0.0, 1.0),
        seed=integer(options, "seed", defaults.seed, None),
        repeat_penalty=number(options, "repeat_penalty", 1.0, 0.0, 10.0, exclusive_min=True),
        repeat_last_n=integer(options, "repeat_last_n", 64, -1),
        presence_penalty=number(options, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=number(options, "frequency_penalty", 0.0, -2.0, 2.0),
    )
    limit = integer(options, "num_predict", None, None)
    max_tokens = defaults.max_tokens if limit is None or limit < 0 else min(max(limit, 1), defaults.max_tokens)
    return sampling, max_tokens, stop_strings(options.get("stop"))


def _format(data: dict[str, Any]) -> str | OutputSchema:
    raw = data.get("format")
    if raw is None or raw == "":
        return ""
    if raw == "json":
        return schema_grammar(ANY_OBJECT, "format")
    if isinstance(raw, dict):
        return schema_grammar(raw, "format")
    raise APIError(400, 'format must be "json" or a JSON Schema object', param="format")


def _think(data: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """(no_think, split_reasoning): `think: true` returns the reasoning apart, false turns it off."""
    think = data.get("think")
    if think is None:
        return None, None
    if not isinstance(think, bool):
        raise APIError(400, "think must be true or false", param="think")
    return (False, True) if think else (True, None)


def _messages(raw: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages must be a non-empty array", param="messages")
    out = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict) or item.get("role") not in ("system", "user", "assistant", "tool"):
            raise APIError(400, f"{where}.role must be system, user, assistant or tool", param=where)
        content = item.get("content") or ""
        if not isinstance(content, str):
            raise APIError(400, f"{where}.content must be a string", param=f"{where}.content")
        if item.get("images"):
            raise APIError(400, f"{where}.images: this server serves a text model", param=f"{where}.images")
        calls = []
        for j, call in enumerate(item.get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                    or not isinstance(function.get("arguments", {}), dict):
                raise APIError(400, f"{where}.tool_calls[{j}] needs a function with a name and arguments object",
                               param=f"{where}.tool_calls")
            calls.append(ToolCall(function["name"], orjson.dumps(function.get("arguments", {})).decode()))
        out.append(ChatMessage(item["role"], content, tuple(calls)))
    return tuple(out)


# -- replies


def _stats(done: Finished, started: float) -> dict[str, Any]:
    return {
        "done_reason": "length" if done.finish_reason == "length" else "stop",
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": int(done.prefill_ms * 1e6),
        "eval_count": done.completion_tokens,
        "eval_duration": int(done.generation_ms * 1e6),
    }


def _calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [{"function": {"index": i, "name": c.name, "arguments": orjson.loads(c.arguments)}}
            for i, c in enumerate(calls)]


def _message(text: str, reasoning: str = "", calls: tuple[ToolCall, ...] = ()) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if reasoning:
        message["thinking"] = reasoning
    if calls:
        message["tool_calls"] = _calls(calls)
    return message


def _line(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body) + b"\n"


def _stream_error(error: APIError) -> list[bytes]:
    return [_line({"error": error.message})]


# -- /api/chat and /api/generate


async def chat(app: App, request: Request) -> Response | EventStream:
    data, completion = await parse_body(request.body, lambda data: (data, _chat_request(data, app.defaults)))
    return await _run(app, request, data, lambda engine: completion, "message")


def _chat_request(data: dict[str, Any], defaults: Defaults) -> CompletionRequest:
    sampling, max_tokens, stop = _options(data, defaults)
    tools, choice = parse_tools(data)
    no_think, split = _think(data)
    return CompletionRequest(
        messages=_messages(data.get("messages")), max_tokens=max_tokens, sampling=sampling, stop=stop,
        no_think=no_think, split_reasoning=split, tools=tools, tool_choice=choice, grammar=_format(data),
    )


async def generate(app: App, request: Request) -> Response | EventStream:
    data = parse_json(request.body)
    prompt, suffix, system = (data.get(name) or "" for name in ("prompt", "suffix", "system"))
    if not all(isinstance(value, str) for value in (prompt, suffix, system)):
        raise APIError(400, "prompt, suffix and system must be strings", param="prompt")
    if not prompt and not suffix:  # what Ollama clients send to load (or, with keep_alive 0, unload) a model
        return await _load(app, data)
    sampling, max_tokens, stop = _options(data, app.defaults)
    no_think, split = _think(data)
    base = CompletionRequest(messages=(), max_tokens=max_tokens, sampling=sampling, stop=stop,
                             no_think=no_think, split_reasoning=split, grammar=_format(data))

    def prepare(engine: Engine) -> CompletionRequest:
        try:
            if suffix:
                return replace(base, prompt=tuple(engine.infill_prompt(prompt, suffix)))
            if boolean(data, "raw", False):
                return replace(base, prompt=tuple(engine.tokenize(prompt)), split_reasoning=False)
        except EngineError as exc:
            raise from_engine(exc, "suffix") from None
        chat_messages = ((ChatMessage("system", system),) if system else ()) + (ChatMessage("user", prompt),)
        return replace(base, messages=chat_messages)

    return await _run(app, request, data, prepare, "response")


async def _load(app: App, data: dict[str, Any]) -> Response:
    """An empty generate: load the model, or unload it when `keep_alive` is 0."""
    model = model_name(data)
    name = app.model(model).name
    if data.get("keep_alive") in (0, "0", "0s", "0m"):
        unloaded = app.pool is not None and await app.pool.unload(name)
        return Response.json(200, {"model": model or name, "created_at": _now(), "response": "", "done": True,
                                   "done_reason": "unload" if unloaded else "stop"})
    await app.engine(model)
    return Response.json(200, {"model": model or name, "created_at": _now(), "response": "", "done": True,
                               "done_reason": "load"})


async def _run(app: App, request: Request, data: dict[str, Any], prepare: Callable[[Engine], CompletionRequest],
               shape: str) -> Response | EventStream:
    """Run the completion `prepare` makes for the model's engine; `shape` is where the text
    goes: a chat `message` or a generate `response`."""
    started = time.perf_counter()
    model = model_name(data) or app.settings.model_id
    stream = boolean(data, "stream", True)

    async def start(engine: Engine) -> Response | EventStream:
        completion = await engine.offload(prepare, engine)  # (it may tokenize a raw prompt)
        try:
            streams = await engine.submit_choices(completion, 1)
        except EngineError as exc:
            raise from_engine(exc, "messages" if shape == "message" else "prompt") from None
        if stream:
            outcome = Outcome()
            frames = _lines(streams[0], model, shape, started, outcome)
            return EventStream(app.guard_stream(request, streams, started, shape, frames, _stream_error, outcome),
                               content_type=NDJSON, framed=False)
        (reply,), done = await app.gather(request, streams, started, False)
        return Response.json(200, _whole(model, shape, reply, done, started))

    return await app.run(request, model_name(data), stream, start, _stream_error, content_type=NDJSON, framed=False)


def _whole(model: str, shape: str, reply: Reply, done: Finished, started: float) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "created_at": _now()}
    if shape == "message":
        body["message"] = _message(reply.text, reply.reasoning, done.tool_calls)
    else:
        body["response"] = reply.text
        if reply.reasoning:
            body["thinking"] = reply.reasoning
    return {**body, "done": True, **_stats(done, started)}


async def _lines(stream: GenerationStream, model: str, shape: str, started: float,
                 outcome: Outcome) -> AsyncIterator[bytes]:
    async for _, event in interleave([stream]):
        if isinstance(event, TextDelta):
            if not event.text and not event.reasoning:
                continue
            if shape == "message":
                part: dict[str, Any] = {"message": _message(event.text, event.reasoning)}
            else:
                part = {"response": event.text, **({"thinking": event.reasoning} if event.reasoning else {})}
            yield _line({"model": model, "created_at": _now(), **part, "done": False})
            continue
        outcome.total = event
        if shape == "message":
            last: dict[str, Any] = {"message": _message("", "", event.tool_calls)}
        else:
            last = {"response": ""}
        yield _line({"model": model, "created_at": _now(), **last, "done": True, **_stats(event, started)})


# -- models, version, embeddings


def _details(model: Model, facts: ModelFacts) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": model.architecture, "families": [model.architecture],
            "parameter_size": facts.parameter_size, "quantization_level": facts.quantization}


def _entry(listed: Listed) -> dict[str, Any]:
    """A model as /api/tags lists it; a model not loaded has its file's facts only."""
    if listed.engine is not None:
        model = listed.engine.model
        facts = model.describe()
        size, modified, details = facts.file_size, facts.modified_at, _details(model, facts)
    else:
        size, modified = file_facts(listed.path)
        details = {"parent_model": "", "format": "gguf", "family": "", "families": [], "parameter_size": "",
                   "quantization_level": ""}
    return {"name": listed.name, "model": listed.name, "modified_at": modified, "size": size,
            "digest": "", "details": details}


async def tags(app: App, request: Request) -> Response:
    return Response.json(200, {"models": [_entry(listed) for listed in app.listing()]})


async def running(app: App, request: Request) -> Response:
    """The loaded models (Ollama's `ps`); they stay loaded until unloaded to make room or when idle."""
    models = [{**_entry(listed), "expires_at": "9999-12-31T23:59:59Z", "size_vram": 0,
               "context_length": listed.engine.n_ctx}
              for listed in app.listing() if listed.engine is not None]
    return Response.json(200, {"models": models})


async def show(app: App, request: Request) -> Response:
    data = parse_json(request.body) if request.body else {}
    requested = model_name(data) or model_name({"model": data.get("name")})  # (older clients send `name`)
    engine = await app.engine(requested)  # (loads it: what a model can do is read from the loaded file)
    model = engine.model
    facts = model.describe()
    capabilities = ["completion"]
    if engine.template.knows_tools:
        capabilities.append("tools")
    if model.fim is not None:
        capabilities.append("insert")
    if engine.thinks:
        capabilities.append("thinking")
    return Response.json(200, {
        "modelfile": "", "parameters": "", "template": engine.template.source,
        "details": _details(model, facts),
        "model_info": {"general.architecture": model.architecture,
                       f"{model.architecture}.context_length": model.n_ctx_train,
                       f"{model.architecture}.embedding_length": model.n_embd},
        "capabilities": capabilities,
        "modified_at": facts.modified_at,
    })


async def version(app: App, request: Request) -> Response:
    return Response.json(200, {"version": OLLAMA_API_VERSION})


def _embed_inputs(data: dict[str, Any]) -> list[str | list[int]]:
    raw = data.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if isinstance(inputs, list) and len(inputs) > MAX_EMBEDDING_INPUTS:
        raise APIError(400, f"input may hold at most {MAX_EMBEDDING_INPUTS} strings, not {len(inputs)}",
                       param="input")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
        raise APIError(400, "input must be a string or an array of strings", param="input")
    return list(inputs)


async def embed(app: App, request: Request) -> Response:
    started = time.perf_counter()
    data, inputs = await parse_body(request.body, lambda data: (data, _embed_inputs(data)))
    engine = await app.engine(model_name(data))
    try:
        result = await engine.embed(inputs)
    except EngineError as exc:
        raise from_engine(exc, "input") from None
    return Response(200, orjson.dumps({
        "model": model_name(data) or app.settings.model_id,
        "embeddings": result.vectors,
        "total_duration": int((time.perf_counter() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
    }, option=orjson.OPT_SERIALIZE_NUMPY))


async def embeddings(app: App, request: Request) -> Response:
    """The older single-text form: `{"prompt"}` in, `{"embedding"}` out."""
    data = parse_json(request.body)
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise APIError(400, "prompt must be a string", param="prompt")
    engine = await app.engine(model_name(data))
    try:
        result = await engine.embed([prompt])
    except EngineError as exc:
        raise from_engine(exc, "prompt") from None
    return Response(200, orjson.dumps({"embedding": result.vectors[0]}, option=orjson.OPT_SERIALIZE_NUMPY))
