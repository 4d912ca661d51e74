"""OpenAI's function calling on the wire: `tools`, `tool_choice`, calls in messages and replies."""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from igllama.api.errors import APIError
from igllama.engine import CallDelta, ToolCall, ToolChoice, ToolSpec

MAX_TOOLS = 128


def parse_tools(data: dict[str, Any]) -> tuple[tuple[ToolSpec, ...], ToolChoice]:
    """`tools` and `tool_choice`, checked; a named choice must be one of the tools."""
    raw = data.get("tools")
    tools: list[ToolSpec] = []
    if raw is not None:
        if not isinstance(raw, list) or len(raw) > MAX_TOOLS:
            raise APIError(400, f"tools must be an array of at most {MAX_TOOLS} tools", param="tools")
        for i, item in enumerate(raw):
            tools.append(_tool(item, f"tools[{i}]"))
        names = [tool.name for tool in tools]
        if len(set(names)) != len(names):
            raise APIError(400, "tools must have different names", param="tools")
    choice = _tool_choice(data.get("tool_choice"), {tool.name for tool in tools})
    return tuple(tools), choice


def _tool(item: Any, where: str) -> ToolSpec:
    if not isinstance(item, dict) or item.get("type") != "function" or not isinstance(item.get("function"), dict):
        raise APIError(400, f'{where} must be {{"type": "function", "function": {{...}}}}', param=where)
    function = item["function"]
    name = function.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise APIError(400, f"{where}.function.name must be a name of 1 to 64 characters", param=f"{where}.function.name")
    description = function.get("description", "")
    if not isinstance(description, str):
        raise APIError(400, f"{where}.function.description must be a string", param=f"{where}.function.description")
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise APIError(400, f"{where}.function.parameters must be a JSON Schema object",
                       param=f"{where}.function.parameters")
    return ToolSpec(name, description, parameters)


def _tool_choice(raw: Any, names: set[str]) -> ToolChoice:
    if raw is None:
        return ToolChoice("auto")
    if raw in ("auto", "none", "required"):
        if raw == "required" and not names:
            raise APIError(400, "tool_choice 'required' needs tools", param="tool_choice")
        return ToolChoice(raw)
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if name not in names:
            raise APIError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        return ToolChoice("required", name)
    raise APIError(
        400, 'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
        param="tool_choice",
    )


def message_tool_calls(item: dict[str, Any], where: str) -> tuple[ToolCall, ...]:
    """The calls of an assistant message in the history."""
    raw = item.get("tool_calls")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise APIError(400, f"{where}.tool_calls must be an array", param=f"{where}.tool_calls")
    calls = []
    for j, call in enumerate(raw):
        here = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise APIError(400, f"{here} must have a function with a name", param=here)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            raise APIError(400, f"{here}.function.arguments must be a JSON string", param=f"{here}.function.arguments")
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError:
            raise APIError(400, f"{here}.function.arguments is not valid JSON", param=f"{here}.function.arguments") from None
        if not isinstance(parsed, dict):
            raise APIError(400, f"{here}.function.arguments must encode an object", param=f"{here}.function.arguments")
        calls.append(ToolCall(function["name"], arguments or "{}", str(call.get("id") or "")))
    return tuple(calls)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def reply_calls(calls: tuple[ToolCall, ...], parallel: bool) -> list[dict[str, Any]]:
    """`message.tool_calls` of a reply (the first call only without `parallel_tool_calls`)."""
    kept = calls if parallel else calls[:1]
    return [
        {"id": call_id(), "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
        for call in kept
    ]


class StreamedCalls:
    """The `delta.tool_calls` of one streamed choice: a call's `id`, `type` and
    name first, then its arguments in pieces as the model writes them; calls
    found only at the end (a bare JSON reply, Llama's or Mistral's form) go
    whole before the final chunk."""

    __slots__ = ("_ids", "_parallel")

    def __init__(self, parallel: bool) -> None:
        self._parallel = parallel
        self._ids: dict[int, str] = {}  # calls streamed so far, by index

    def pieces(self, deltas: tuple[CallDelta, ...]) -> list[dict[str, Any]]:
        """The entries for one chunk; pieces of the same call are joined."""
        out: list[dict[str, Any]] = []
        for delta in deltas:
            if delta.index > 0 and not self._parallel:
                continue
            if out and out[-1]["index"] == delta.index:
                out[-1]["function"]["arguments"] += delta.arguments
            elif delta.name:
                self._ids[delta.index] = call_id()
                out.append({"index": delta.index, "id": self._ids[delta.index], "type": "function",
                            "function": {"name": delta.name, "arguments": delta.arguments}})
            else:
                out.append({"index": delta.index, "function": {"arguments": delta.arguments}})
        return out

    def rest(self, calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
        """The calls of the finished reply that did not stream, whole, each with its `index`."""
        kept = reply_calls(calls, self._parallel)
        return [{"index": i, **call} for i, call in enumerate(kept) if i not in self._ids]
