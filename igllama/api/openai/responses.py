"""OpenAI's Responses API: `/v1/responses`.

`input` (a string or message, function_call and function_call_output items)
and `instructions` become the engine's neutral request; the reply comes back
as output items (a message with output_text, function calls), whole or as
the Responses event stream. Stored responses (`store`, default true) are
kept in a bounded in-memory map so that `previous_response_id` can continue
a conversation; the oldest go first.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.choices import Outcome, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import boolean, max_tokens_of, model_name, number, parse_body
from igllama.api.output import ANY_OBJECT, schema_grammar
from igllama.api.tools import call_id, parse_tools
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
)
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App


class ResponseStore:
    """The conversations of recent stored responses, by id, at most `capacity` of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[ChatMessage, ...]] = OrderedDict()

    def get(self, response_id: str) -> tuple[ChatMessage, ...]:
        try:
            return self._items[response_id]
        except KeyError:
            raise APIError(404, f"Previous response with id '{response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found") from None

    def put(self, response_id: str, conversation: tuple[ChatMessage, ...]) -> None:
        if self.capacity <= 0:
            return
        self._items[response_id] = conversation
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


@dataclass(slots=True)
class ResponsesCall:
    request: CompletionRequest
    history: tuple[ChatMessage, ...]  # the conversation without `instructions`, for the store
    stream: bool
    store: bool
    echo: dict[str, Any]  # request settings the response object repeats
    parallel: bool = True
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")


def routes(app: App, store: ResponseStore) -> None:
    for path in ("/v1/responses", "/responses"):  # (llama-server answers both)
        app.add("POST", path, lambda request: create(app, store, request))


# -- requests


def parse_responses(data: dict[str, Any], app: App, store: ResponseStore) -> ResponsesCall:
    earlier: tuple[ChatMessage, ...] = ()
    previous = data.get("previous_response_id")
    if previous is not None:
        if not isinstance(previous, str):
            raise APIError(400, "previous_response_id must be a string", param="previous_response_id")
        earlier = store.get(previous)
    history = (*earlier, *_input(data.get("input")))
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise APIError(400, "instructions must be a string", param="instructions")
    messages = ((ChatMessage("system", instructions),) if instructions else ()) + history
    tools, choice = parse_tools({"tools": _flat_tools(data.get("tools")), "tool_choice": _tool_choice(data)})
    sampling = SamplingParams(
        temperature=number(data, "temperature", app.defaults.temperature, 0.0, 2.0),
        top_p=number(data, "top_p", 0.95, 0.0, 1.0),
    )
    request = CompletionRequest(
        messages=messages,
        max_tokens=max_tokens_of(data, app.defaults, "max_output_tokens"),
        sampling=sampling,
        tools=tools,
        tool_choice=choice,
        grammar=_text_format(data.get("text")),
        cache_prompt=boolean(data, "cache_prompt", True),
    )
    echo = {
        "model": model_name(data) or app.settings.model_id,
        "instructions": instructions,
        "max_output_tokens": data.get("max_output_tokens"),
        "previous_response_id": previous,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "tools": data.get("tools") or [],
        "tool_choice": data.get("tool_choice", "auto"),
        "text": data.get("text") or {"format": {"type": "text"}},
        "metadata": data.get("metadata") or {},
    }
    return ResponsesCall(request, history, boolean(data, "stream", False), boolean(data, "store", True), echo,
                         boolean(data, "parallel_tool_calls", True))


def _input(raw: Any) -> list[ChatMessage]:
    if isinstance(raw, str):
        return [ChatMessage("user", raw)]
    if not isinstance(raw, list) or not raw:
        raise APIError(400, "input must be a string or a non-empty array of input items", param="input")
    out: list[ChatMessage] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message" and item.get("role") in ("user", "system", "developer", "assistant"):
            role = "system" if item["role"] == "developer" else item["role"]
            out.append(ChatMessage(role, _content(item.get("content"), where)))
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments", "{}"), str):
                raise APIError(400, f"{where} needs a name and arguments (a JSON string)", param=where)
            call = ToolCall(item["name"], item.get("arguments") or "{}", str(item.get("call_id", "")))
            if out and out[-1].role == "assistant":  # calls after the assistant's text: one turn
                out[-1] = ChatMessage("assistant", out[-1].content, (*out[-1].tool_calls, call))
            else:
                out.append(ChatMessage("assistant", "", (call,)))
        elif kind == "function_call_output":
            output = item.get("output")
            if not isinstance(output, str):
                raise APIError(400, f"{where}.output must be a string", param=f"{where}.output")
            out.append(ChatMessage("tool", output, (), str(item.get("call_id", ""))))
        elif kind == "reasoning":
            continue  # earlier reasoning is not fed back
        else:
            raise APIError(400, f"{where} must be a message, function_call or function_call_output item",
                           param=where)
    return out


def _content(raw: Any, where: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        texts = []
        for j, part in enumerate(raw):
            if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                    or not isinstance(part.get("text"), str):
                raise APIError(400, f"{where}.content[{j}] must be an input_text part; this server reads text",
                               param=f"{where}.content")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where}.content must be a string or an array of input_text parts",
                   param=f"{where}.content")


def _flat_tools(raw: Any) -> Any:
    """Responses tools are flat (`{"type": "function", "name", ...}`): nest them as chat tools are."""
    if not isinstance(raw, list):
        return raw
    tools = []
    for tool in raw:
        if isinstance(tool, dict) and tool.get("type") == "function" and "function" not in tool:
            tool = {"type": "function", "function": {k: v for k, v in tool.items() if k not in ("type", "strict")}}
        tools.append(tool)
    return tools


def _tool_choice(data: dict[str, Any]) -> Any:
    raw = data.get("tool_choice")
    if isinstance(raw, dict) and raw.get("type") == "function" and "name" in raw:
        return {"type": "function", "function": {"name": raw["name"]}}
    return raw


def _text_format(raw: Any) -> str | OutputSchema:
    if raw is None:
        return ""
    spec = raw.get("format") if isinstance(raw, dict) else None
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind in (None, "text"):
        return ""
    if kind == "json_object":
        return schema_grammar(ANY_OBJECT, "text.format")
    if kind == "json_schema" and isinstance(spec, dict):
        return schema_grammar(spec.get("schema"), "text.format.schema")
    raise APIError(400, "text.format.type must be text, json_object or json_schema", param="text.format.type")


# -- replies


def _usage(done: Finished) -> dict[str, Any]:
    return {"input_tokens": done.prompt_tokens, "input_tokens_details": {"cached_tokens": done.cached_tokens},
            "output_tokens": done.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": done.prompt_tokens + done.completion_tokens}


def _message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_ref: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_ref, "name": name, "arguments": arguments,
            "status": status}


def _response(call: ResponsesCall, created: int, status: str, output: list[dict[str, Any]],
              done: Finished | None) -> dict[str, Any]:
    incomplete = done is not None and done.finish_reason == "length"
    return {
        "id": call.id, "object": "response", "created_at": created,
        "status": "incomplete" if incomplete else status,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None, "output": output, "parallel_tool_calls": call.parallel, "store": call.store,
        "truncation": "disabled", "usage": _usage(done) if done is not None else None, **call.echo,
    }


def _output(reply_text: str, calls: tuple[ToolCall, ...]) -> tuple[list[dict[str, Any]], tuple[ToolCall, ...]]:
    """The output items of a finished reply, and its calls with the ids they were given."""
    items: list[dict[str, Any]] = []
    if reply_text or not calls:
        items.append(_message_item(f"msg_{uuid.uuid4().hex}", reply_text))
    named = tuple(ToolCall(c.name, c.arguments, call_id()) for c in calls)
    items += [_call_item(f"fc_{uuid.uuid4().hex}", c.id, c.name, c.arguments) for c in named]
    return items, named


def _remember(store: ResponseStore, call: ResponsesCall, text: str, calls: tuple[ToolCall, ...]) -> None:
    if call.store:
        store.put(call.id, (*call.history, ChatMessage("assistant", text, calls)))


async def create(app: App, store: ResponseStore, request: Request) -> Response | EventStream:
    started = time.perf_counter()
    call = await parse_body(request.body, lambda data: parse_responses(data, app, store))

    async def start(engine: Engine) -> Response | EventStream:
        try:
            streams = await engine.submit_choices(call.request, 1)
        except EngineError as exc:
            raise from_engine(exc, "input") from None
        return await _respond(app, store, request, call, streams, started)

    return await app.run(request, call.echo["model"], call.stream, start, _stream_error,
                         framed=False)


async def _respond(app: App, store: ResponseStore, request: Request, call: ResponsesCall,
                   streams: list[GenerationStream], started: float) -> Response | EventStream:
    created = int(time.time())
    if call.stream:
        outcome = Outcome()
        frames = _events(streams[0], call, store, created, outcome)
        return EventStream(app.guard_stream(request, streams, started, "input", frames, _stream_error, outcome),
                           framed=False)
    (reply,), done = await app.gather(request, streams, started, False, "input")
    calls = done.tool_calls if call.parallel else done.tool_calls[:1]
    output, named = _output(reply.text, calls)
    _remember(store, call, reply.text, named)
    return Response.json(200, _response(call, created, "completed", output, done))


def _stream_error(error: APIError) -> list[bytes]:
    data = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
    return [b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"]


class _Sequencer:
    """Responses events, numbered in order."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.n, **fields}
        self.n += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _events(stream: GenerationStream, call: ResponsesCall, store: ResponseStore, created: int,
                  outcome: Outcome) -> AsyncIterator[bytes]:
    event = _Sequencer()
    yield event("response.created", response=_response(call, created, "in_progress", [], None))
    yield event("response.in_progress", response=_response(call, created, "in_progress", [], None))
    output: list[dict[str, Any]] = []
    message_id, text = "", list[str]()
    streamed: dict[int, tuple[int, dict[str, Any]]] = {}  # engine call index -> (output index, item)
    named: list[ToolCall] = []

    def close_message() -> list[bytes]:
        nonlocal message_id
        if not message_id:
            return []
        whole = "".join(text)
        index = len(output)
        item = _message_item(message_id, whole)
        output.append(item)
        frames = [event("response.output_text.done", item_id=message_id, output_index=index, content_index=0,
                        text=whole),
                  event("response.content_part.done", item_id=message_id, output_index=index, content_index=0,
                        part=item["content"][0]),
                  event("response.output_item.done", output_index=index, item=item)]
        message_id = ""
        return frames

    def open_message() -> list[bytes]:
        nonlocal message_id
        message_id = f"msg_{uuid.uuid4().hex}"
        index = len(output)
        return [event("response.output_item.added", output_index=index, item=_message_item(message_id, "", "in_progress")),
                event("response.content_part.added", item_id=message_id, output_index=index, content_index=0,
                      part={"type": "output_text", "text": "", "annotations": []})]

    def finish_call(index: int, item: dict[str, Any]) -> list[bytes]:
        item["status"] = "completed"
        return [event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                      arguments=item["arguments"]),
                event("response.output_item.done", output_index=index, item=item)]

    async for _, delta in interleave([stream]):
        if isinstance(delta, TextDelta):
            if delta.text:
                if not message_id:
                    for frame in open_message():
                        yield frame
                text.append(delta.text)
                yield event("response.output_text.delta", item_id=message_id, output_index=len(output),
                            content_index=0, delta=delta.text)
            for piece in delta.calls:
                if piece.index > 0 and not call.parallel:
                    continue
                if piece.name:
                    for frame in close_message():
                        yield frame
                    for open_index, open_item in streamed.values():
                        if open_item["status"] != "completed":
                            for frame in finish_call(open_index, open_item):
                                yield frame
                    item = _call_item(f"fc_{uuid.uuid4().hex}", call_id(), piece.name, "", "in_progress")
                    streamed[piece.index] = (len(output), item)
                    output.append(item)
                    yield event("response.output_item.added", output_index=len(output) - 1, item=dict(item))
                if piece.arguments:
                    index, item = streamed[piece.index]
                    item["arguments"] += piece.arguments
                    yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                                delta=piece.arguments)
            continue
        outcome.total = delta
        for frame in close_message():
            yield frame
        calls = delta.tool_calls if call.parallel else delta.tool_calls[:1]
        for i, found in enumerate(calls):
            if i in streamed:
                index, item = streamed[i]
                item["arguments"] = found.arguments
                if item["status"] != "completed":
                    for frame in finish_call(index, item):
                        yield frame
            else:
                item = _call_item(f"fc_{uuid.uuid4().hex}", call_id(), found.name, found.arguments, "in_progress")
                output.append(item)
                yield event("response.output_item.added", output_index=len(output) - 1, item=dict(item))
                for frame in finish_call(len(output) - 1, item):
                    yield frame
            named.append(ToolCall(found.name, found.arguments, item["call_id"]))
        if not output:
            for frame in [*open_message(), *close_message()]:
                yield frame
        _remember(store, call, "".join(text), tuple(named))
        final = _response(call, created, "completed", output, delta)
        yield event("response.incomplete" if final["status"] == "incomplete" else "response.completed",
                    response=final)
