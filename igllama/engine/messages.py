"""A conversation's messages as the engine takes them, whatever dialect they came in."""

from __future__ import annotations

from dataclasses import dataclass

from igllama.engine.tool_calls import ToolCall


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # an assistant's calls
    tool_call_id: str = ""  # a tool result: the call it answers
