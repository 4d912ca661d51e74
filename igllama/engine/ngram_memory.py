"""What this engine's earlier replies wrote, for drafting across requests.

A reply asked for again (a regenerated answer, an agent repeating a step, the
same file rewritten in the next turn) writes much of what an earlier reply
wrote, which is not in its own history. The memory keeps the tokens of
finished replies, each behind the tail of the prompt it answered, and finds
where the tail of a sequence's history last appeared in them: its key is the
last `key` tokens, long enough that a match is a copy, not a common phrase.

It is bounded (`capacity` tokens; the oldest half goes when it is full) and
lives on the engine thread. What a draft from it proposes is verified like
any other, so a reply stays the model's own; what the memory does reveal is
timing: a reply that an earlier one wrote comes faster (`--spec-memory 0`
turns it off, docs/speculation.md).
"""

from __future__ import annotations

from collections.abc import Sequence

# Between two remembered replies: no token equals it, so a match or a draft stops there.
_GAP = -1


class NgramMemory:
    __slots__ = ("_base", "_index", "_tokens", "capacity", "context", "key")

    def __init__(self, capacity: int, key: int = 16, context: int = 32) -> None:
        self.capacity = capacity
        self.key = key  # tokens that must match for a draft
        self.context = context  # prompt tokens kept before each reply (a match can be this long)
        self._tokens: list[int] = []
        self._base = 0  # the absolute position of _tokens[0]
        self._index: dict[int, int] = {}  # hash of `key` tokens -> the absolute position after them

    def __len__(self) -> int:
        return len(self._tokens)

    def remember(self, tokens: Sequence[int], n_prompt: int) -> None:
        """Keep the reply `tokens[n_prompt:]`, behind the last `context` tokens of its prompt."""
        segment = list(tokens[max(0, n_prompt - self.context):])
        if len(segment) - min(n_prompt, self.context) < 1 or len(segment) < self.key:
            return
        if len(segment) + 1 > self.capacity:
            segment = segment[len(segment) + 1 - self.capacity:]
        if len(self._tokens) + len(segment) + 1 > self.capacity:
            self._drop(len(self._tokens) + len(segment) + 1 - self.capacity)
        buffer, key, index = self._tokens, self.key, self._index
        start = self._base + len(buffer)
        buffer.extend(segment)
        buffer.append(_GAP)
        # Newer replies win a shared key; inside one reply the first occurrence does, which the
        # most of the reply follows (a reply that loops would otherwise draft from near its end).
        positions: dict[int, int] = {}
        for end in range(key, len(segment) + 1):
            positions.setdefault(hash(tuple(segment[end - key:end])), start + end)
        index.update(positions)

    def find(self, tokens: Sequence[int], longest: int) -> tuple[int, int]:
        """Where the tail of `tokens` was last remembered: (the absolute position after it, how many
        tokens before that position equal the tail, at most `longest`), or (-1, 0)."""
        key = self.key
        if len(tokens) < key:
            return -1, 0
        end = self._index.get(hash(tuple(tokens[-key:])), -1)
        at = end - self._base
        if at < key:  # unknown, or dropped since
            return -1, 0
        buffer, n_tokens = self._tokens, len(tokens)
        n = 0
        while n < longest and n < n_tokens and at - n - 1 >= 0 and buffer[at - n - 1] == tokens[n_tokens - n - 1]:
            n += 1
        return (end, n) if n >= key else (-1, 0)  # (a hash collision matches less)

    def continuation(self, end: int, limit: int) -> list[int]:
        """Up to `limit` remembered tokens from absolute position `end`, up to the end of that reply."""
        at = end - self._base
        if at < 0:
            return []
        out = self._tokens[at:at + limit]
        if _GAP in out:
            del out[out.index(_GAP):]
        return out

    def _drop(self, need: int) -> None:
        """Forget the oldest replies: at least `need` tokens and half of what is kept, at a reply's end."""
        buffer = self._tokens
        cut = max(need, len(buffer) // 2)
        while cut < len(buffer) and buffer[cut - 1] != _GAP:
            cut += 1
        del buffer[:cut]
        self._base += cut
        base = self._base
        if len(self._index) > 2 * self.capacity:
            self._index = {h: end for h, end in self._index.items() if end - self.key >= base}
