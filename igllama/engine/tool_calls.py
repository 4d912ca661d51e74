"""Tool calls in a reply's text, found as the text streams (sans-IO: text in, events out).

Models write calls in several forms; this parser knows the ones small
models actually produce:

- Hermes / Qwen: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`,
  one block per call, anywhere in the reply;
- Llama 3.x: `<|python_tag|>` then one or more `{"name": ..., "parameters":
  {...}}` objects (separated by `;`), to the end of the reply;
- Mistral: `[TOOL_CALLS]` then a JSON array of calls (v0.3), or
  `name[ARGS]{...}` (later tokenizers, with an optional `[CALL_ID]id`), to
  the end of the reply;
- a bare JSON object or array of objects, or the same in a ``` fence, that
  is the whole reply and names a declared tool (small models often ignore
  their own format and answer so; llama-server misses these; a Llama 3.x
  call without its tag looks like this).

The Llama and Mistral markers are control tokens, which render as nothing;
the engine renders them as their text for requests that offer tools
(`Model.call_markers`), so the parser sees them.

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
PYTHON_TAG = "<|python_tag|>"  # Llama 3.x
TOOL_CALLS = "[TOOL_CALLS]"  # Mistral
ARGS, CALL_ID = "[ARGS]", "[CALL_ID]"
# Control tokens that mark calls (rendered as text only for requests with tools).
MARKERS = (PYTHON_TAG, TOOL_CALLS, ARGS, CALL_ID)
# Markers after which the rest of the reply is calls.
_TAIL_OPENERS = (PYTHON_TAG, TOOL_CALLS)
_OPENERS = (OPEN, *_TAIL_OPENERS)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call: the function's name, its arguments as a JSON text, and its id
    (given by the client in a conversation's history; none in a parsed reply)."""

    name: str
    arguments: str
    id: str = ""


@dataclass(frozen=True, slots=True)
class CallDelta:
    """A piece of a call as it streams: the call's `index` in the reply, its
    `name` in the first piece ("" after), then its arguments' text in pieces."""

    index: int
    name: str
    arguments: str


# The head of a Hermes call whose arguments can stream: `{"name": "f", "arguments": ` then `{`.
_STREAMABLE = re.compile(r'\s*\{\s*"name"\s*:\s*"([^"\\]+)"\s*,\s*"(?:arguments|parameters)"\s*:\s*(?=\{)')


class ToolCallParser:
    """Splits a reply into content and calls of the `tools` named.

    `feed` returns the content that is safe to show now; `finish` returns
    the rest of the content and every call found. A reply that is one bare
    or fenced JSON call is held whole (it starts with `{`, `[` or a fence)
    until `finish` decides.

    A Hermes call streams: once its name is known, `take_deltas` hands out
    `CallDelta`s, the name first, then the arguments object's text as it
    arrives. Its recorded arguments are that same text, so streamed pieces
    join to what a whole reply reports.
    """

    def __init__(self, tools: Collection[str], prefix: str = "") -> None:
        self.tools = frozenset(tools)
        self.calls: list[ToolCall] = []
        self._held = prefix  # text not yet shown: a possible opener, or a call in progress
        self._seen_text = bool(prefix.strip())
        self._whole_reply = not prefix  # still possible: the whole reply is one bare JSON call
        self._after_call = False  # the white space after a call is not content
        self.n_streamed = 0  # calls whose pieces went out through take_deltas
        self._deltas: list[CallDelta] = []
        self._streaming: _StreamingCall | None = None  # the open Hermes call whose arguments stream

    def take_deltas(self) -> list[CallDelta]:
        """Pieces of streaming calls released since the last call."""
        deltas, self._deltas = self._deltas, []
        return deltas

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
                if head.startswith(TOOL_CALLS):
                    self._whole_reply = False  # Mistral's marker, not a bare array
                elif head[0] in "{[" or head.startswith("`"):
                    return "".join(shown)  # maybe a bare call (or the marker, still arriving): wait
                else:
                    self._whole_reply = False
            start, opener = _first_opener(self._held)
            if start < 0:
                keep = max(partial_suffix(self._held, marker) for marker in _OPENERS)
                shown.append(self._held[: len(self._held) - keep])
                self._held = self._held[len(self._held) - keep :]
                return "".join(shown)
            shown.append(self._held[:start])
            self._held = self._held[start:]
            if opener != OPEN:
                return "".join(shown)  # the rest of the reply is calls: decided at the end
            end = self._held.find(CLOSE, len(OPEN))
            self._stream_arguments(self._held[len(OPEN) : end if end >= 0 else len(self._held)])
            if end < 0:
                return "".join(shown)
            call = self._end_call(self._held[len(OPEN) : end])
            if call is None:  # not a call of ours: show it as it is
                shown.append(self._held[: end + len(CLOSE)])
            else:
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
        start, opener = _first_opener(held)
        if start < 0:
            return held
        body = held[start + len(opener) :]
        if opener == OPEN:
            # An unclosed block at the very end: models often stop before
            # </tool_call>, and a reply cut by max_tokens ends in one. A call
            # that parses counts; one that does not is dropped, never shown.
            self._stream_arguments(body)
            call = self._end_call(body)
            if call is not None:
                self.calls.append(call)
            return held[:start]
        calls = _parse_tail(opener, body, self.tools)
        if calls:
            self.calls.extend(calls)
            return held[:start]
        return held[:start] + body  # not calls of ours (a built-in tool, say): the text, without the marker


    def _stream_arguments(self, body: str) -> None:
        """Release what is new of the open call's arguments (`body`: the block's text so far)."""
        streaming = self._streaming
        if streaming is None:
            head = _STREAMABLE.match(body)
            if head is None or head.group(1) not in self.tools:
                return  # not (yet) a call whose arguments can stream: decided when it closes
            streaming = self._streaming = _StreamingCall(head.group(1), head.end())
            self._deltas.append(CallDelta(len(self.calls), streaming.name, ""))
            self.n_streamed += 1
        piece = streaming.advance(body)
        if piece:
            self._deltas.append(CallDelta(len(self.calls), "", piece))

    def _end_call(self, body: str) -> ToolCall | None:
        """The call of a finished block; a streamed one keeps the arguments it streamed."""
        streaming, self._streaming = self._streaming, None
        if streaming is None:
            return _parse_call(body, self.tools)
        if streaming.end < 0:  # cut off inside its arguments: the pieces sent are all there is
            return None
        return ToolCall(streaming.name, body[streaming.start : streaming.end])


class _StreamingCall:
    """The arguments object of a call as it arrives: where it starts and, once
    its braces balance (outside strings), where it ends."""

    __slots__ = ("_depth", "_escape", "_in_string", "_scanned", "end", "name", "sent", "start")

    def __init__(self, name: str, start: int) -> None:
        self.name = name
        self.start = self.sent = self._scanned = start
        self.end = -1
        self._depth = 0
        self._in_string = self._escape = False

    def advance(self, body: str) -> str:
        """The arguments' text in `body` not released before."""
        if self.end < 0:
            for i in range(self._scanned, len(body)):
                c = body[i]
                if self._in_string:
                    if self._escape:
                        self._escape = False
                    elif c == "\\":
                        self._escape = True
                    elif c == '"':
                        self._in_string = False
                elif c == '"':
                    self._in_string = True
                elif c in "{[":
                    self._depth += 1
                elif c in "}]":
                    self._depth -= 1
                    if self._depth == 0:
                        self.end = i + 1
                        break
            self._scanned = len(body) if self.end < 0 else self.end
        stop = self.end if self.end >= 0 else len(body)
        piece, self.sent = body[self.sent : stop], max(self.sent, stop)
        return piece


def _first_opener(text: str) -> tuple[int, str]:
    """Where the first call marker in `text` starts, and which it is; (-1, "") if none."""
    found = [(i, marker) for marker in _OPENERS if (i := text.find(marker)) >= 0]
    return min(found) if found else (-1, "")


def _parse_tail(opener: str, text: str, tools: frozenset[str]) -> list[ToolCall]:
    """The calls after a Llama `<|python_tag|>` or a Mistral `[TOOL_CALLS]`; [] unless all of it is calls."""
    text = text.strip()
    if opener == TOOL_CALLS and text and text[0] not in "[{":
        calls = []
        for part in text.split(TOOL_CALLS):  # name[ARGS]{...}, or name[CALL_ID]id[ARGS]{...}
            name, args_marker, arguments = part.partition(ARGS)
            name = name.split(CALL_ID)[0].strip()
            call = _parse_call(f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}', tools) if args_marker else None
            if call is None:
                return []
            calls.append(call)
        return calls
    values = _json_values(text)
    items = [item for value in values for item in (value if isinstance(value, list) else [value])]
    found = [_as_call(item, tools) for item in items]
    return [c for c in found if c is not None] if found and all(found) else []


def _json_values(text: str) -> list[Any]:
    """JSON values one after another, separated by white space, `;` or `,`; [] if anything else is there."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i == len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return []
        values.append(value)


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
