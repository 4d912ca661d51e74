"""From token bytes to the text a client sees.

Three small stages, each fed the previous one's output:
`Utf8Assembler` joins bytes into whole characters, `ThinkStripper` drops a
leading `</think>` a no-think model emits anyway, and `StopMatcher` cuts the
text at the first stop string while holding back anything that might still
become one.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence

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
    """The three stages in order, for one generated reply."""

    __slots__ = ("_stop", "_think", "_utf8")

    def __init__(self, stops: Sequence[str], strip_think: bool) -> None:
        self._utf8 = Utf8Assembler()
        self._think = ThinkStripper() if strip_think else None
        self._stop = StopMatcher(stops)

    @property
    def stopped(self) -> bool:
        return self._stop.stopped

    def feed(self, data: bytes) -> str:
        text = self._utf8.feed(data)
        if self._think is not None and text:
            text = self._think.feed(text)
        return self._stop.feed(text) if text else ""

    def flush(self) -> str:
        """Everything still held back, at the end of a reply that did not hit a stop string."""
        text = self._utf8.flush()
        if self._think is not None:
            text = self._think.feed(text) + self._think.flush() if text else self._think.flush()
        return self._stop.feed(text) + self._stop.flush() if not self._stop.stopped else ""
