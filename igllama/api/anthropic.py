"""Anthropic's Messages API: `/v1/messages` and `/v1/messages/count_tokens`.

Requests become the engine's neutral `CompletionRequest` (system and
messages, `tool_use` / `tool_result` blocks as calls and tool messages,
tools with `input_schema`); replies come back as content blocks (thinking,
text, tool_use) with Anthropic's stop reasons, whole or as its named SSE
events. Errors on these paths use Anthropic's shape.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.choices import Outcome, Reply, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import boolean, integer, model_name, number, parse_body, stop_strings
from igllama.api.output import schema_grammar
from igllama.engine import (
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
    ToolChoice,
    ToolSpec,
)
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error"}
_STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


@dataclass(frozen=True, slots=True)
class MessagesCall:
    request: CompletionRequest
    stream: bool
    model: str
    parallel: bool


def routes(app: App) -> None:
    app.add("POST", "/v1/messages", lambda request: messages(app, request), error_response)
    app.add("POST", "/v1/messages/count_tokens", lambda request: count_tokens(app, request), error_response)


def error_body(error: APIError) -> bytes:
    kind = _ERROR_TYPES.get(error.status, "invalid_request_error" if error.status < 500 else "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})


def error_response(error: APIError) -> Response:
    return error.response(error_body(error))


# -- requests


def parse_messages(data: dict[str, Any], app: App, for_counting: bool = False) -> MessagesCall:
    model = model_name(data) or app.settings.model_id
    max_tokens = integer(data, "max_tokens", None, 1)
    if max_tokens is None and not for_counting:
        raise APIError(400, "max_tokens: Field required", param="max_tokens")
    chat = [*_system(data.get("system")), *_conversation(data.get("messages"))]
    tools, choice, parallel = _tools(data)
    sampling = SamplingParams(
        temperature=number(data, "temperature", app.defaults.temperature, 0.0, 1.0),
        top_p=number(data, "top_p", app.defaults.top_p, 0.0, 1.0),
        top_k=integer(data, "top_k", app.defaults.top_k, 0),
        min_p=app.defaults.min_p,
        seed=app.defaults.seed,
        repeat_penalty=app.defaults.repeat_penalty,
        presence_penalty=app.defaults.presence_penalty,
        frequency_penalty=app.defaults.frequency_penalty,
    )
    no_think, split = _thinking(data.get("thinking"))
    request = CompletionRequest(
        messages=tuple(chat),
        max_tokens=min(max_tokens or 1, app.defaults.max_tokens),
        sampling=sampling,
        stop=stop_strings(data.get("stop_sequences")) if data.get("stop_sequences") != [] else (),
        no_think=no_think,
        tools=tools,
        tool_choice=choice,
        split_reasoning=split,
        grammar=_output_format(data),
        cache_prompt=boolean(data, "cache_prompt", True),  # llama-server's switch, through extra_body
    )
    return MessagesCall(request, boolean(data, "stream", False), model, parallel)


def _system(raw: Any) -> list[ChatMessage]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [ChatMessage("system", raw)]
    if isinstance(raw, list):
        return [ChatMessage("system", "".join(_texts(raw, "system")))]
    raise APIError(400, "system must be a string or an array of text blocks", param="system")


def _texts(blocks: list[Any], where: str) -> list[str]:
    texts = []
    for i, block in enumerate(blocks):
        if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise APIError(400, f"{where}.{i}: expected a text block", param=f"{where}.{i}")
        texts.append(block["text"])
    return texts


def _conversation(raw: Any) -> list[ChatMessage]:
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "messages: at least one message is required", param="messages")
    chat: list[ChatMessage] = []
    for i, item in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            raise APIError(400, f"{where}.role: must be 'user' or 'assistant'", param=f"{where}.role")
        role, content = item["role"], item.get("content")
        if isinstance(content, str):
            chat.append(ChatMessage(role, content))
        elif isinstance(content, list):
            chat += _blocks(role, content, where)
        else:
            raise APIError(400, f"{where}.content: must be a string or an array of content blocks",
                           param=f"{where}.content")
    return chat


def _blocks(role: str, blocks: list[Any], where: str) -> list[ChatMessage]:
    """One message's blocks: text joined, tool_use blocks as calls, each tool_result a tool message."""
    out: list[ChatMessage] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        here = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue  # earlier reasoning is not fed back, as chat templates drop it
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                raise APIError(400, f"{here}: a tool_use block needs a name and an input object", param=here)
            calls.append(ToolCall(block["name"], orjson.dumps(block.get("input", {})).decode(), str(block.get("id", ""))))
        elif kind == "tool_result" and role == "user":
            out.append(ChatMessage("tool", _result_text(block.get("content", ""), here), (),
                                   str(block.get("tool_use_id", ""))))
        else:
            raise APIError(400, f"{here}: unsupported content block {kind!r} in a {role} message "
                           "(this server reads text, tool_use and tool_result)", param=here)
    if texts or calls or not out:
        out.append(ChatMessage(role, "".join(texts), tuple(calls)))
    return out


def _result_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_texts(content, f"{where}.content"))
    raise APIError(400, f"{where}.content: must be a string or text blocks", param=f"{where}.content")


def _tools(data: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], ToolChoice, bool]:
    raw = data.get("tools") or []
    if not isinstance(raw, list):
        raise APIError(400, "tools: must be an array", param="tools")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) \
                or not isinstance(tool.get("input_schema", {}), dict):
            raise APIError(400, f"tools.{i}: a tool needs a name and an input_schema object", param=f"tools.{i}")
        tools.append(ToolSpec(tool["name"], str(tool.get("description", "")),
                              tool.get("input_schema") or {"type": "object", "properties": {}}))
    choice_raw = data.get("tool_choice") or {"type": "auto"}
    kind = choice_raw.get("type") if isinstance(choice_raw, dict) else None
    names = {tool.name for tool in tools}
    if kind == "auto":
        choice = ToolChoice("auto")
    elif kind == "none":
        choice = ToolChoice("none")
    elif kind == "any" and tools:
        choice = ToolChoice("required")
    elif kind == "tool" and choice_raw.get("name") in names:
        choice = ToolChoice("required", choice_raw["name"])
    else:
        raise APIError(400, "tool_choice: must be auto, any, none, or tool naming one of the tools",
                       param="tool_choice")
    parallel = not (isinstance(choice_raw, dict) and choice_raw.get("disable_parallel_tool_use") is True)
    return tuple(tools), choice, parallel


def _thinking(raw: Any) -> tuple[bool | None, bool | None]:
    """(no_think, split_reasoning) for Anthropic's `thinking`: enabled shows the model's reasoning."""
    if raw is None:
        return None, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind == "enabled":
        return False, True
    if kind == "disabled":
        return True, None
    raise APIError(400, "thinking.type: must be 'enabled' or 'disabled'", param="thinking")


def _output_format(data: dict[str, Any]) -> str | OutputSchema:
    """Structured outputs (`output_format: {"type": "json_schema", "schema": ...}`), or
    llama-server's `grammar` (GBNF) sent through the SDK's extra_body."""
    raw = data.get("output_format")
    if raw is None:
        grammar = data.get("grammar")
        if grammar is not None and (not isinstance(grammar, str) or not grammar.strip()):
            raise APIError(400, "grammar: must be a GBNF grammar (a string with a `root` rule)", param="grammar")
        return grammar or ""
    if not isinstance(raw, dict) or raw.get("type") != "json_schema" or not isinstance(raw.get("schema"), dict):
        raise APIError(400, 'output_format: must be {"type": "json_schema", "schema": {...}}', param="output_format")
    return schema_grammar(raw["schema"], "output_format.schema")


# -- handlers


async def messages(app: App, request: Request) -> Response | EventStream:
    started = time.perf_counter()
    call = await parse_body(request.body, lambda data: parse_messages(data, app))

    async def start(engine: Engine) -> Response | EventStream:
        try:
            streams = await engine.submit_choices(call.request, 1)
        except EngineError as exc:
            raise from_engine(exc, "messages") from None
        return await _reply(app, request, call, streams, started)

    return await app.run(request, call.model, call.stream, start, _stream_error, framed=False)


async def _reply(app: App, request: Request, call: MessagesCall, streams: list[GenerationStream], started: float
                 ) -> Response | EventStream:
    mid = f"msg_{uuid.uuid4().hex[:24]}"
    if call.stream:
        outcome = Outcome()
        frames = _events(streams[0], call, mid, outcome)
        return EventStream(app.guard_stream(request, streams, started, "messages", frames, _stream_error, outcome),
                           framed=False)
    (reply,), total = await app.gather(request, streams, started, False)
    return Response.json(200, _message(mid, call, reply, total))


async def count_tokens(app: App, request: Request) -> Response:
    call = await parse_body(request.body, lambda data: parse_messages(data, app, for_counting=True))
    engine = await app.engine(call.model)
    try:
        tokens = await engine.offload(engine.prompt_tokens, call.request)
    except EngineError as exc:
        raise from_engine(exc, "messages") from None
    return Response.json(200, {"input_tokens": len(tokens)})


# -- replies


def _usage(done: Finished) -> dict[str, Any]:
    return {"input_tokens": done.prompt_tokens - done.cached_tokens, "output_tokens": done.completion_tokens,
            "cache_read_input_tokens": done.cached_tokens, "cache_creation_input_tokens": 0}


def _stop_reason(done: Finished) -> str:
    if done.stop_string:
        return "stop_sequence"
    return _STOP_REASONS.get(done.finish_reason, "end_turn")


def _tool_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _message(mid: str, call: MessagesCall, reply: Reply, done: Finished) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.reasoning:
        content.append({"type": "thinking", "thinking": reply.reasoning, "signature": ""})
    calls = done.tool_calls if call.parallel else done.tool_calls[:1]
    if reply.text or not calls:
        content.append({"type": "text", "text": reply.text})
    content += [{"type": "tool_use", "id": _tool_id(), "name": c.name, "input": orjson.loads(c.arguments)}
                for c in calls]
    return {"id": mid, "type": "message", "role": "assistant", "model": call.model, "content": content,
            "stop_reason": _stop_reason(done), "stop_sequence": done.stop_string or None, "usage": _usage(done)}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _stream_error(error: APIError) -> list[bytes]:
    return [b"event: error\ndata: " + error_body(error) + b"\n\n"]


class _Blocks:
    """The content blocks of a streamed message, opened and closed as the reply moves on."""

    def __init__(self) -> None:
        self.index = -1
        self.kind = ""  # of the open block, "" when none is open
        self.calls: dict[int, int] = {}  # the engine's call index -> its block index

    def switch(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        frames = self.close()
        self.index += 1
        self.kind = kind
        return [*frames, _event("content_block_start",
                                {"type": "content_block_start", "index": self.index, "content_block": block})]

    def close(self) -> list[bytes]:
        if not self.kind:
            return []
        self.kind = ""
        return [_event("content_block_stop", {"type": "content_block_stop", "index": self.index})]

    def delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})


async def _events(stream: GenerationStream, call: MessagesCall, mid: str, outcome: Outcome) -> AsyncIterator[bytes]:
    yield _event("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": call.model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": stream.prompt_tokens, "output_tokens": 0}}})
    yield _event("ping", {"type": "ping"})
    blocks = _Blocks()
    async for _, event in interleave([stream]):
        if isinstance(event, TextDelta):
            if event.reasoning:
                if blocks.kind != "thinking":
                    for frame in blocks.switch("thinking", {"type": "thinking", "thinking": ""}):
                        yield frame
                yield blocks.delta({"type": "thinking_delta", "thinking": event.reasoning})
            if event.text:
                if blocks.kind != "text":
                    for frame in blocks.switch("text", {"type": "text", "text": ""}):
                        yield frame
                yield blocks.delta({"type": "text_delta", "text": event.text})
            for piece in event.calls:
                if piece.index > 0 and not call.parallel:
                    continue
                if piece.name:
                    for frame in blocks.switch("tool_use", {"type": "tool_use", "id": _tool_id(), "name": piece.name,
                                                            "input": {}}):
                        yield frame
                    blocks.calls[piece.index] = blocks.index
                if piece.arguments:
                    yield blocks.delta({"type": "input_json_delta", "partial_json": piece.arguments})
            continue
        outcome.total = event
        calls = event.tool_calls if call.parallel else event.tool_calls[:1]
        for i, found in enumerate(calls):
            if i in blocks.calls:
                continue  # streamed already
            for frame in blocks.switch("tool_use", {"type": "tool_use", "id": _tool_id(), "name": found.name,
                                                    "input": {}}):
                yield frame
            yield blocks.delta({"type": "input_json_delta", "partial_json": found.arguments})
        if blocks.index < 0:  # an empty reply still has its (empty) text block
            for frame in blocks.switch("text", {"type": "text", "text": ""}):
                yield frame
        for frame in blocks.close():
            yield frame
        yield _event("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": _stop_reason(event),
                                                 "stop_sequence": event.stop_string or None},
                                       "usage": {"output_tokens": event.completion_tokens}})
        yield _event("message_stop", {"type": "message_stop"})
