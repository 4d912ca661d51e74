"""Offering tools to a model: what a template is given, and what the reply is made to open with.

A template that knows tools (its Jinja uses `tools`, as Qwen's and Llama's
do) gets them, and the conversation's calls and results, the way it expects
them. Any other template gets a system block that lists the tools and asks
for calls in the Hermes form (`<tool_call>{"name": ..., "arguments": ...}
</tool_call>`), and earlier calls and results written out in that form, so
one parser reads every model's calls.

`tool_choice` "required" or a named function pre-fills the opening of a
call after the assistant header: the model can only continue it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from igllama.engine.tool_calls import CLOSE, OPEN

if TYPE_CHECKING:
    from igllama.engine.messages import ChatMessage

CALL_OPENING = OPEN + '\n{"name": "'
AFTER_NAME = '", "arguments": '  # between a call's name and its arguments


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; `parameters` is its JSON Schema."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def template_value(self) -> dict[str, Any]:
        """The shape chat templates expect in `tools` (OpenAI's)."""
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters)
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """"auto" (the model decides), "required" (some call), or `name` (that function)."""

    mode: str = "auto"
    name: str | None = None

    def forced_opening(self) -> str:
        """What the reply is made to start with: nothing unless a call is required."""
        if self.name is not None:
            return f"{CALL_OPENING}{self.name}{AFTER_NAME}"
        return CALL_OPENING if self.mode == "required" else ""


def tool_prompt(tools: Sequence[ToolSpec]) -> str:
    """A system block offering `tools` to a model whose template does not know them."""
    listing = "\n".join(json.dumps(tool.template_value(), ensure_ascii=False) for tool in tools)
    return (
        "You can call functions to help answer. Their signatures, one JSON object a line:\n"
        f"{listing}\n\n"
        "To call one, reply with only this, once for each call:\n"
        f'{OPEN}\n{{"name": "<function name>", "arguments": {{<the arguments as a JSON object>}}}}\n{CLOSE}'
    )


def written_out(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> list[ChatMessage]:
    """The conversation for a template without tools: the tool block joined to the
    system message, calls as Hermes markup, results as user messages."""
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "assistant" and message.tool_calls:
            calls = "\n".join(
                f'{OPEN}\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n{CLOSE}'
                for c in message.tool_calls
            )
            text = f"{message.content}\n{calls}" if message.content else calls
            out.append(replace(message, content=text, tool_calls=()))
        elif message.role == "tool":
            out.append(replace(message, role="user", content=f"<tool_response>\n{message.content}\n</tool_response>",
                               tool_call_id=""))
        else:
            out.append(message)
    if tools:
        block = tool_prompt(tools)
        if out and out[0].role == "system":
            out[0] = replace(out[0], content=f"{out[0].content}\n\n{block}")
        else:
            out.insert(0, replace(messages[0], role="system", content=block, tool_calls=(), tool_call_id=""))
    return out


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as tool-aware templates read it: calls with their arguments as objects."""
    value: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        value["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
            for c in message.tool_calls
        ]
    if message.tool_call_id:
        value["tool_call_id"] = message.tool_call_id
    return value
