"""KV states of idle slots, kept in host RAM (llama-server's --cache-ram).

Idle slots that keep their cells in the shared KV pool make every later
batch attend over those cells too (llama.cpp's attention spans the pool up to
its highest used cell): measured here, prefill ran 15-35% slower after a
burst of clients. So when a new request is admitted, the idle slots' states
are copied out to host RAM and their cells freed; a later request that
continues one of those conversations gets its state copied back instead of
prefilling it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(slots=True)
class CachedPrompt:
    tokens: list[int]
    state: Any  # a ctypes byte array from llama_state_seq_get_data
    # The lowest position the state holds for every layer: llama.cpp saves a
    # sliding-window layer's cells only as far back as its window reaches.
    min_position: int = 0
    lora: tuple[tuple[int, float], ...] = ()  # the LoRA adapters the state was computed with

    @property
    def size(self) -> int:
        return len(self.state)


class PromptCache:
    """Saved sequence states, least recently saved evicted first beyond `budget_bytes`.

    `size` is always the sum of the entries' sizes and never above the budget.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self.entries: list[CachedPrompt] = []  # oldest first
        self.size = 0

    def put(self, tokens: list[int], state: Any, min_position: int = 0,
            lora: tuple[tuple[int, float], ...] = ()) -> None:
        entry = CachedPrompt(tokens, state, min_position, lora)
        if entry.size > self.budget_bytes:
            return
        for old in [e for e in self.entries if e.tokens == tokens and e.lora == lora]:
            self.take(old)  # the newer state of the same tokens replaces it
        self.entries.append(entry)
        self.size += entry.size
        while self.size > self.budget_bytes:
            self.size -= self.entries.pop(0).size

    def take(self, entry: CachedPrompt) -> None:
        """Remove `entry` (which must be cached) to use its state."""
        self.entries.remove(entry)
        self.size -= entry.size

    def clear(self) -> None:
        self.entries.clear()
        self.size = 0
