"""N-gram speculation: drafting tokens a sequence will likely write next, from what it has seen.

Much of what models write copies from their prompt or their own output (code
edits, quotes, JSON echoing its input). A sequence's `Drafter` finds the
longest earlier occurrence of its history's tail and proposes what followed
it there. The draft rides in the same decode as everyone else's tokens, with
logits at every position; the sequence keeps the longest prefix whose
tokens its own sampler draws, plus the token drawn where they part, so a
reply is the one it would be without speculation.

A draft is only worth its cost when enough of it is accepted: on a CPU a
decode of k tokens of one sequence costs far more than one token's (each
position also pays for the output layer over the whole vocabulary), so the
length is chosen by expected gain: the measured cost of a decode of each
size (`DecodeCosts`, timed at load, then learnt) against the tokens a draft of that
length is expected to yield, from the sequence's own acceptance so far and
how long the matched history is. When nothing pays, nothing is drafted; in
a large batch a draft slows every sequence in it, which the same sum counts.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

from igllama.engine.ngram_memory import NgramMemory

# Draft lengths tried (the continuation found may be shorter).
_LENGTHS = (1, 2, 3, 4, 6, 8, 16, 32, 64)
# Decode sizes timed at start: one token, and one token plus each draft length up to 16.
# Longer ones are extrapolated, then learnt while serving (`DecodeCosts.observe`): a
# decode with logits at n positions makes llama.cpp touch 2 x n rows of the vocabulary
# (its output buffer and the graph's logits), 1 MB each on a 262k vocabulary, so timing
# a 65-token decode at start would keep ~130 MB resident on a server that never drafts
# that long (and add ~0.9 s to its start). Measured on both test models, the cost from
# 17 tokens on grows almost linearly (33 and 65 within 10% of the line through 9 and 17).
MEASURED_SIZES = (1, *(1 + k for k in _LENGTHS if k <= 16))
_EXTRAPOLATED_SIZES = tuple(1 + k for k in _LENGTHS if k > 16)
# How far one decode's observed time moves its size's cost.
_LEARNING = 0.1
# A draft must promise this much more throughput than no draft at all.
_MIN_GAIN = 1.15
# How much a sequence's record of acceptance still counts, per token written since (half after ~69).
_DECAY_PER_TOKEN = 0.99
# The longest draft a sequence makes with no accepted tokens behind it; each one accepted adds two.
_FIRST_DRAFT = 4
# Trials at the prior rate added to a sequence's own record of acceptance.
_PRIOR_TRIALS = 2.0


@dataclass(frozen=True, slots=True)
class SpecConfig:
    enabled: bool = True
    # Tokens drafted at most per step. Long drafts are where copying pays: a
    # decode of 16 tokens costs ~6x one token's on a CPU, so drafts capped at
    # six rarely pay at all (a code edit on Qwen2.5-Coder-0.5B: 15 tokens
    # drafted in a 232-token reply, against 208 with 64). The price: from
    # eight queries on, llama.cpp's CPU flash attention takes another (tiled)
    # path whose logits differ from one-token decoding by ~0.3 nats, which
    # can flip a near-tie; up to seven they are bit-identical with one thread
    # (measured on both test models), so `draft_max=6` with one thread keeps
    # every reply exactly as without speculation (docs/speculation.md).
    draft_max: int = 64
    ngram_min: int = 3  # the shortest history tail looked up
    ngram_max: int = 32  # matches longer than this count as this long
    # Tokens of earlier replies kept to draft from (`NgramMemory`; 0: none). 65,536 cost ~8 MB.
    memory: int = 65536


class DecodeCosts:
    """How long a decode of n tokens (all with logits) takes: a cautious guess until `measure`."""

    def __init__(self, points: dict[int, float] | None = None) -> None:
        self.set(points or {1: 1.0, 64: 64.0})  # as if a batch saved nothing: no draft pays

    def measure(self, decode: Callable[[int], None], sizes: tuple[int, ...] = MEASURED_SIZES) -> None:
        """Time `decode(n)` (n tokens of one sequence, logits at each) for each size, after a warm-up;
        the faster of two passes, since a busy neighbour only ever adds time. Runs on the engine
        thread, at start: the llama.cpp thread team must stay that thread's."""
        decode(1)
        points: dict[int, float] = {}
        for _ in range(2):
            for n in sizes:
                start = time.perf_counter()
                decode(n)
                ms = (time.perf_counter() - start) * 1000.0
                points[n] = min(ms, points.get(n, ms))
        self.set(points)
        # Longer decodes: guesses on the line through the two largest sizes timed, for `observe` to correct.
        self.set(points | {n: self.ms(n) for n in _EXTRAPOLATED_SIZES if n > max(points)})

    def set(self, points: dict[int, float]) -> None:
        """Use these costs (ms by decode size): measured ones, or assumed (tests, benchmarks)."""
        self._sizes = sorted(points)
        self._ms = [points[n] for n in self._sizes]

    def observe(self, n: int, ms: float) -> None:
        """A decode of `n` tokens (logits at each) took `ms`: move that size's cost towards it.
        The timings at start can be off (another process busy for that second); serving corrects them."""
        i = bisect.bisect_left(self._sizes, n)
        if i < len(self._sizes) and self._sizes[i] == n:
            self._ms[i] += _LEARNING * (ms - self._ms[i])

    def ms(self, n: int) -> float:
        """The cost of n tokens, interpolated between measured sizes, and beyond the last on the
        line through the last two (never below the last one's cost)."""
        sizes, ms = self._sizes, self._ms
        i = bisect.bisect_left(sizes, n)
        if i < len(sizes) and sizes[i] == n:
            return ms[i]
        if i == 0:
            return ms[0]
        if i == len(sizes):
            if len(sizes) == 1:
                return ms[0] * n / sizes[0]
            slope = (ms[-1] - ms[-2]) / (sizes[-1] - sizes[-2])
            return ms[-1] + max(slope, 0.0) * (n - sizes[-1])
        lo, hi = sizes[i - 1], sizes[i]
        return ms[i - 1] + (ms[i] - ms[i - 1]) * (n - lo) / (hi - lo)


class Drafter:
    """One sequence's history, indexed by its n-grams, and how well its drafts have done."""

    __slots__ = ("_accepted", "_copying", "_index", "_indexed", "_rejected", "_seen_at", "config", "costs",
                 "memory", "n_prompt", "tokens")

    def __init__(self, config: SpecConfig, costs: DecodeCosts, tokens: list[int],
                 memory: NgramMemory | None = None) -> None:
        self.config = config
        self.costs = costs
        self.memory = memory  # earlier replies of this engine, drafted from where the history has no long match
        self.tokens = list(tokens)  # the prompt and every token generated (the last one not yet decoded)
        self.n_prompt = len(self.tokens)
        self._index: dict[tuple[int, ...], int] = {}  # an ngram_min-gram -> where it last ended
        self._indexed = 0  # end positions indexed so far: 1 .. _indexed
        # Drafted tokens accepted, and drafts cut short by a rejection, recent ones weighing most;
        # apart for drafts made inside a long match (a copy in progress) and the others.
        self._accepted = [0.0, 0.0]
        self._rejected = [0.0, 0.0]
        self._copying = False  # whether the draft being verified was made inside a long match
        self._seen_at = len(self.tokens)  # the history's length when the record was last decayed

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def propose(self, limit: int, batch_tokens: int = 1) -> list[int]:
        """The draft worth verifying after the history's tail: up to `limit` tokens, or none.
        `batch_tokens`: what the batch holds without it (other sequences' tokens and this one's next)."""
        limit = min(limit, self.config.draft_max)
        n = self.config.ngram_min
        tokens = self._catch_up()
        if limit < 1 or len(tokens) <= n:
            return []
        end = self._index.get(tuple(tokens[-n:]))
        matched = 0 if end is None else self._match_length(end)
        memory = self.memory
        if memory is not None and matched < memory.key:
            at, longer = memory.find(tokens, self.config.ngram_max)
            if longer > matched:
                continuation = memory.continuation(at, limit)
                return continuation[:self._best_length(longer, len(continuation), batch_tokens)]
        if end is None:
            return []
        continuation = tokens[end : end + limit]
        if end + limit > len(tokens):
            # The tail repeats what `end` is followed by: a loop of that period, which goes on as it went.
            continuation *= -(-limit // len(continuation))
        return continuation[:self._best_length(matched, min(limit, len(continuation)), batch_tokens)]

    def remember(self) -> None:
        """The sequence has ended: keep what it wrote for the drafts of later requests."""
        if self.memory is not None:
            self.memory.remember(self.tokens, self.n_prompt)

    def record(self, drafted: int, accepted: int) -> None:
        """Learn from a verified draft: `accepted` successes, and a failure if it was cut short."""
        if not drafted:
            return
        self._decay()
        i = self._copying
        self._accepted[i] += accepted
        self._rejected[i] += accepted < drafted

    def _decay(self) -> None:
        """Fade the record with every token written since: what the text does now says most, and a
        sequence whose drafts stopped paying tries again once their failures have faded."""
        n = len(self.tokens)
        if n != self._seen_at:
            f = _DECAY_PER_TOKEN ** (n - self._seen_at)
            self._accepted = [x * f for x in self._accepted]
            self._rejected = [x * f for x in self._rejected]
            self._seen_at = n

    def acceptance(self, copying: bool, prior: float) -> float:
        """The chance that a drafted token is accepted, given that the one before it was.

        Acceptance is a run of successes ended by a failure (or by the draft's
        end, which says nothing about the token after it), so the estimate is
        successes / trials, with the failures that happened and two trials at
        the `prior` rate added: three accepted of three inside a long match
        (prior 0.9) is 0.96, not 1. Averaging each draft's accepted/(accepted+1)
        instead pinned a sequence that kept drafting 3 tokens at 0.86, which
        then kept choosing drafts of 3 in a file it was copying whole.
        """
        self._decay()
        accepted, rejected = self._accepted[copying], self._rejected[copying]
        return (accepted + _PRIOR_TRIALS * prior) / (accepted + rejected + _PRIOR_TRIALS)

    def _best_length(self, matched: int, available: int, batch_tokens: int) -> int:
        """The draft length with the best expected throughput gain, 0 if none gains enough."""
        # A sequence's own record says most: that of its drafts made in a match as long as this one.
        self._copying = matched >= self.config.ngram_max // 2
        p = self.acceptance(self._copying, _prior(matched, self.config))
        # Drafts grow as they are accepted: a guess the sequence's recent record does not back
        # (its first, or one after its failures have faded) stays short, so it costs little.
        available = min(available, _FIRST_DRAFT + 2 * int(self._accepted[self._copying]))
        base = self.costs.ms(batch_tokens)
        best, best_gain = 0, _MIN_GAIN
        for k in _LENGTHS:
            k = min(k, available)
            expected = p * (1 - p**k) / (1 - p) if p < 1 else k  # tokens accepted, on average
            # Every sequence of the batch waits for the longer decode; this one gains `expected`.
            gain = (batch_tokens + expected) / batch_tokens * base / self.costs.ms(batch_tokens + k)
            if gain > best_gain:
                best, best_gain = k, gain
            if k == available:
                break
        return best

    def _match_length(self, end: int) -> int:
        """How many tokens before `end` equal the history's tail (at most ngram_max)."""
        tokens, tail = self.tokens, len(self.tokens)
        n = 0
        while n < self.config.ngram_max and end - n - 1 >= 0 and tokens[end - n - 1] == tokens[tail - n - 1]:
            n += 1
        return n

    def _catch_up(self) -> list[int]:
        """Index every n-gram that ends before the last position (the tail itself is what is looked up)."""
        tokens, n = self.tokens, self.config.ngram_min
        last = len(tokens) - 1
        index = self._index
        for end in range(max(self._indexed + 1, n), last + 1):
            index[tuple(tokens[end - n : end])] = end
        self._indexed = max(self._indexed, last)
        return tokens


def _prior(matched: int, config: SpecConfig) -> float:
    """Acceptance to expect before a sequence has drafted: a longer match, a likelier copy."""
    return min(0.95, 0.6 + 0.35 * matched / config.ngram_max)
