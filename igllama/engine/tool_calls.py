"""Tool calls in a reply's text, found as the text streams (sans-IO: text in, events out).

Models write calls in several forms; this parser knows the ones small
models actually produce:

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, anywhere in the reply;
- a bare JSON object or array of objects, or the same in a ``` fence, that
  is the whole reply and names a declared tool (small models often ignore
  their own format and answer so; llama-server misses these).

Text that might open a call is held back until it is decided, like a
possible stop string, so no markup reaches the content.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: the function's name, its arguments as a JSON text, and its id
    (given by the client in a conversation's history; none in a parsed reply)."""

    name: str
    arguments: str
    id: str = ""


class ToolCallParser:
    """Splits a reply into content and calls of the `tools` named.

    `feed` returns the content that is safe to show now; `finish` returns
    the rest of the content and every call found. A reply that is one bare
    or fenced JSON call is held whole (it starts with `{`, `[` or a fence)
    until `finish` decides.
    """

    def __init__(self, tools: Collection[str], prefix: str = "") -> None:
        self.tools = frozenset(tools)
        self.calls: list[ToolCall] = []
        self._held = prefix  # text not yet shown: a possible opener, or a call in progress
        self._seen_text = bool(prefix.strip())
        self._whole_reply = not prefix  # still possible: the whole reply is one bare JSON call
        self._after_call = False  # the white space after a call is not content

    def feed(self, text: str) -> str:
        """Content safe to show now."""
        self._held += text
        shown: list[str] = []
        while True:
            if self._after_call:
                self._held = self._held.lstrip()
                if not self._held:
                    return "".join(shown)
                self._after_call = False
            if self._whole_reply:
                head = self._held.lstrip()
                if not head:
                    return "".join(shown)
                if head[0] in "{[" or head.startswith("`"):
                    return "".join(shown)  # maybe a bare call: wait for the end
                self._whole_reply = False
            start = self._held.find(OPEN)
            if start < 0:
                keep = partial_suffix(self._held, OPEN)
                shown.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep :]
                return "".join(shown)
            end = self._held.find(CLOSE, start + len(OPEN))
            if end < 0:
                shown.append(self._held[:start])
                self._held = self._held[start:]
                return "".join(shown)
            call = _parse_call(self._held[start + len(OPEN) : end], self.tools)
            if call is None:  # not a call of ours: show it as it is
                shown.append(self._held[: end + len(CLOSE)])
            else:
                shown.append(self._held[:start])
                self.calls.append(call)
                self._after_call = True
            self._held = self._held[end + len(CLOSE) :]

    def finish(self) -> str:
        """The rest of the content, once the reply has ended; `calls` is then complete."""
        held, self._held = self._held, ""
        if self._after_call:
            held = held.lstrip()
        if self._whole_reply:
            calls = _parse_bare(held.strip(), self.tools)
            if calls:
                self.calls.extend(calls)
                return ""
            return held
        start = held.find(OPEN)
        if start >= 0:
            # An unclosed block at the very end: models often stop before
            # </tool_call>, and a reply cut by max_tokens ends in one. A call
            # that parses counts; one that does not is dropped, never shown.
            call = _parse_call(held[start + len(OPEN) :], self.tools)
            if call is not None:
                self.calls.append(call)
            return held[:start]
        return held


def _parse_call(text: str, tools: frozenset[str]) -> ToolCall | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return _as_call(value, tools)


def _parse_bare(text: str, tools: frozenset[str]) -> list[ToolCall]:
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    calls = [_as_call(item, tools) for item in items]
    return [c for c in calls if c is not None] if calls and all(calls) else []


def _as_call(value: Any, tools: frozenset[str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in tools:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(value["name"], json.dumps(arguments, ensure_ascii=False))


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest tail of `text` that begins `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
