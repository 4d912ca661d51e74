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

from igllama.engine.tool_calls import ToolCall, ToolCallParser

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


class StopMatcher:
    """Finds stop strings across token boundaries without ever emitting them."""

    __slots__ = ("_held", "_stops", "stopped")

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now; sets `stopped` when a stop string matched."""
        if not self._stops:
            return text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
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

    __slots__ = ("_calls", "_stop", "_think", "_utf8")

    def __init__(
        self, stops: Sequence[str], strip_think: bool, tools: Collection[str] = (), opening: str = ""
    ) -> None:
        self._utf8 = Utf8Assembler()
        self._think = ThinkStripper() if strip_think else None
        self._stop = StopMatcher(stops)
        self._calls = ToolCallParser(tools, opening) if tools else None

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The calls found so far (all of them once `flush` has run)."""
        return self._calls.calls if self._calls is not None else []

    def feed(self, data: bytes) -> str:
        text = self._utf8.feed(data)
        if self._think is not None and text:
            text = self._think.feed(text)
        text = self._stop.feed(text) if text else ""
        return self._calls.feed(text) if self._calls is not None and text else text

    def flush(self) -> str:
        """Everything still held back, at the end of the reply."""
        text = ""
        if not self._stop.stopped:
            text = self._utf8.flush()
            if self._think is not None:
                text = self._think.feed(text) + self._think.flush() if text else self._think.flush()
            text = self._stop.feed(text) + self._stop.flush()
        if self._calls is not None:
            text = self._calls.feed(text) + self._calls.finish()
        return text
