"""From token bytes to the text a client sees.

Three small stages, each fed the previous one's output:
`Utf8Assembler` joins bytes into whole characters, `ThinkStripper` drops a
leading `</think>` a no-think model emits anyway, and `StopMatcher` cuts the
text at the first stop string while holding back anything that might still
become one.
"""

from __future__ import annotations

import codecs
from collections.abc import Collection, Sequence

from igllama.engine.tool_calls import CallDelta, ToolCall, ToolCallParser
from igllama.engine.tool_calls import partial_suffix as _partial_suffix

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


class Utf8Assembler:
    """Bytes in, whole characters out: a character split over tokens is emitted once, whole."""

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """What is left at the end: an unfinished character becomes U+FFFD."""
        return self._decoder.decode(b"", final=True)


class ThinkStripper:
    """Removes a leading `</think>` (and the white space after it) from a reply."""

    __slots__ = ("_held", "_state")

    def __init__(self) -> None:
        self._held = ""
        self._state = "undecided"  # -> "stripping" (after </think>) -> "passing"

    def feed(self, text: str) -> str:
        if self._state == "passing":
            return text
        if self._state == "undecided":
            self._held += text
            head = self._held.lstrip()
            if head.startswith(THINK_CLOSE):
                text = head[len(THINK_CLOSE) :]
                self._held = ""
                self._state = "stripping"
            elif THINK_CLOSE.startswith(head):
                return ""  # still could be "</think>": wait for more
            else:
                self._state = "passing"
                text, self._held = self._held, ""
                return text
        text = text.lstrip()
        if text:
            self._state = "passing"
        return text

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held if self._state == "undecided" else ""


class ReasoningSplitter:
    """Separates a reply's `<think>...</think>` block (its reasoning) from the answer.

    `feed` returns the answer's text and keeps the reasoning's for `take_reasoning`;
    a possible tag is held back until decided. `opened` means the prompt already
    opened the block (templates that end the generation prompt with `<think>`).
    """

    __slots__ = ("_held", "_reasoning", "_state", "_trim")

    def __init__(self, opened: bool = False) -> None:
        self._held = ""
        self._reasoning: list[str] = []
        self._state = "reasoning" if opened else "start"  # -> "reasoning" -> "answer"
        self._trim = True  # white space right after a tag belongs to neither part

    def feed(self, text: str) -> str:
        self._held += text
        if self._state == "start":
            head = self._held.lstrip()
            if head.startswith(THINK_OPEN):
                self._held = head[len(THINK_OPEN) :]
                self._state = "reasoning"
            elif THINK_OPEN.startswith(head):
                return ""  # still could be "<think>"
            else:
                self._state, self._trim = "answer", False
        if self._state == "reasoning":
            if self._trim:
                self._held = self._held.lstrip()
                self._trim = not self._held
            end = self._held.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_suffix(self._held, THINK_CLOSE)
                # Trailing white space may end the block: hold it until the next text decides.
                body = self._held[: len(self._held) - keep]
                kept_space = len(body) - len(body.rstrip())
                self._reasoning.append(body[: len(body) - kept_space])
                self._held = self._held[len(body) - kept_space :]
                return ""
            self._reasoning.append(self._held[:end].rstrip())
            self._held = self._held[end + len(THINK_CLOSE) :]
            self._state, self._trim = "answer", True
        if self._trim:
            self._held = self._held.lstrip()
            self._trim = not self._held
        text, self._held = self._held, ""
        return text

    def take_reasoning(self) -> str:
        text = "".join(self._reasoning)
        self._reasoning.clear()
        return text

    def flush(self) -> str:
        """The rest at the end: an unclosed block stays reasoning."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            self._reasoning.append(held.rstrip())
            return ""
        return held


class StopMatcher:
    """Finds stop strings across token boundaries without ever emitting them."""

    __slots__ = ("_held", "_stops", "matched", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched = ""  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string matched."""
        if not self._stops:
            return text
        buffer = self._held + text
        found = [(i, stop) for stop in self._stops if (i := buffer.find(stop)) >= 0]
        if found:
            cut, self.matched = min(found)
            self._held = ""
            self.stopped = True
            return buffer[:cut]
        keep = self._longest_partial_stop(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial_stop(self, buffer: str) -> int:
        """Length of the longest tail of `buffer` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class TextPipeline:
    """The stages in order, for one generated reply; with `tools`, a last stage
    takes their calls out of the text (`tool_calls.ToolCallParser`)."""

    __slots__ = ("_calls", "_reasoning", "_stop", "_think", "_utf8")

    def __init__(
        self,
        stops: Sequence[str],
        strip_think: bool,
        tools: Collection[str] = (),
        opening: str = "",
        reasoning: ReasoningSplitter | None = None,
    ) -> None:
        self._utf8 = Utf8Assembler()
        self._think = ThinkStripper() if strip_think else None
        self._stop = StopMatcher(stops)
        self._reasoning = reasoning
        self._calls = ToolCallParser(tools, opening) if tools else None

    def take_reasoning(self) -> str:
        """Reasoning text released since the last call (with a `ReasoningSplitter`)."""
        return self._reasoning.take_reasoning() if self._reasoning is not None else ""

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    @property
    def matched_stop(self) -> str:
        """The stop string that ended the reply ("" if none did)."""
        return self._stop.matched

    def take_call_deltas(self) -> tuple[CallDelta, ...]:
        """Pieces of tool calls released since the last call (with tools)."""
        return tuple(self._calls.take_deltas()) if self._calls is not None else ()

    @property
    def reads_calls(self) -> bool:
        """Whether the reply is searched for tool calls (the request offers tools)."""
        return self._calls is not None

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls found so far (all of them once `flush` has run)."""
        return self._calls.calls if self._calls is not None else []

    def feed(self, data: bytes) -> str:
        text = self._utf8.feed(data)
        if self._think is not None and text:
            text = self._think.feed(text)
        text = self._stop.feed(text) if text else ""
        if self._reasoning is not None and text:
            text = self._reasoning.feed(text)
        return self._calls.feed(text) if self._calls is not None and text else text

    def flush(self) -> str:
        """Everything still held back, at the end of the reply."""
        text = ""
        if not self._stop.stopped:
            text = self._utf8.flush()
            if self._think is not None:
                text = self._think.feed(text) + self._think.flush() if text else self._think.flush()
            text = self._stop.feed(text) + self._stop.flush()
        if self._reasoning is not None:
            text = (self._reasoning.feed(text) if text else "") + self._reasoning.flush()
        if self._calls is not None:
            text = self._calls.feed(text) + self._calls.finish()
        return text
