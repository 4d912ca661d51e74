"""Log-probabilities of a prompt's own tokens (echo + logprobs, vLLM's `prompt_logprobs`).

The logits at prompt position i are the model's distribution of token i + 1,
so a prompt of n tokens is scored from n - 1 rows of logits, which the
worker asks llama.cpp for with the batch's per-token `logits` flags only
for sequences that want them: no other request pays for a row. Each row is
a log-softmax over the raw logits, as for generated tokens (logprobs.py).

Rows are handled a few at a time as one numpy block: a vocabulary of 262k
entries makes a row 1 MB, and working on every row of a 128-row chunk at
once would allocate that many megabytes of temporaries per operation.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.logprobs import TokenLogprob, TopLogprob

MAX_PROMPT_LOGPROBS = 20  # alternatives per position (vLLM's default max_logprobs)
# Logits one decode may return for scoring: llama.cpp keeps an output buffer of
# rows x vocabulary floats, so the bound is in bytes (256 rows of the demo model's
# 262k tokens; a whole 512-token batch of a 49k vocabulary). Fewer rows would also
# mean smaller batches, and a batch's matrix products run faster per token the
# more tokens it has.
MAX_SCORED_BYTES = 256 * 1024 * 1024


def max_scored_rows(n_vocab: int) -> int:
    """Rows of logits a decode may return for prompts' scores, for a vocabulary of `n_vocab`."""
    return max(1, MAX_SCORED_BYTES // (4 * max(n_vocab, 1)))
_BLOCK_ROWS = 16  # rows per numpy block: 16 MB of temporaries for a 262k vocabulary
_ITERATED_TOP = 5  # up to this many alternatives, repeated argmax beats argpartition


@dataclass(frozen=True, slots=True)
class PromptScores:
    """A prompt's tokens with their log-probabilities: the first token has none
    (nothing precedes it), `entries[i]` is the token at position i + 1."""

    first_token: int
    first_piece: bytes
    entries: tuple[TokenLogprob, ...]


def score_rows(
    ctx: llama.llama_context_p,
    first_output: int,
    targets: list[int],
    n_vocab: int,
    n_top: int,
    with_rank: bool,
    piece: Callable[[int], bytes],
) -> list[TokenLogprob]:
    """Entries for `targets[j]` from output `first_output + j` of the last decode."""
    entries: list[TokenLogprob] = []
    for start in range(0, len(targets), _BLOCK_ROWS):
        chunk = targets[start : start + _BLOCK_ROWS]
        block = _rows(ctx, first_output + start, len(chunk), n_vocab)
        entries += _score_block(block, chunk, n_top, with_rank, piece)
    return entries


def _rows(ctx: llama.llama_context_p, first: int, n: int, n_vocab: int) -> np.ndarray:
    """n consecutive output rows as one (n, n_vocab) array: a view where llama.cpp's
    output buffer holds them in order (it does for one micro-batch), else a copy."""
    head = llama.llama_get_logits_ith(ctx, first)
    tail = llama.llama_get_logits_ith(ctx, first + n - 1)
    step = ctypes.sizeof(ctypes.c_float) * n_vocab
    head_at = ctypes.cast(head, ctypes.c_void_p).value or 0
    tail_at = ctypes.cast(tail, ctypes.c_void_p).value or 0
    if tail_at - head_at == (n - 1) * step:
        return np.ctypeslib.as_array(head, shape=(n, n_vocab))
    return np.stack([np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, first + j), shape=(n_vocab,))
                     for j in range(n)])


def _score_block(block: np.ndarray, targets: list[int], n_top: int, with_rank: bool,
                 piece: Callable[[int], bytes]) -> list[TokenLogprob]:
    # Row by row through one scratch row: a row (1 MB for 262k entries) stays in the CPU's
    # cache between the subtraction, the exp and the sum, where a whole block would not
    # (measured: 40% faster). exp and sum in float32 (numpy's SIMD loops, pairwise sum):
    # the error stays far below 1e-4 nats.
    scratch = np.empty(block.shape[1], dtype=np.float32)
    entries = []
    for j, token in enumerate(targets):
        row = block[j]
        peak = float(row.max())
        np.subtract(row, peak, out=scratch)
        np.exp(scratch, out=scratch)
        log_total = peak + math.log(float(scratch.sum()))
        chosen = float(row[token])
        rank = int(np.count_nonzero(row > row[token])) + 1 if with_rank else 0
        top = tuple(TopLogprob(t, piece(t), float(row[t]) - log_total) for t in _top(row, n_top, scratch))
        entries.append(TokenLogprob(token, piece(token), chosen - log_total, top, rank))
    return entries


def _top(row: np.ndarray, n_top: int, scratch: np.ndarray) -> list[int]:
    """The row's `n_top` most likely token ids, most likely first."""
    if n_top <= 0:
        return []
    if n_top == 1:
        return [int(row.argmax())]
    if n_top <= _ITERATED_TOP:
        np.copyto(scratch, row)  # (the row is llama.cpp's buffer: mask a copy)
        picks = []
        for _ in range(n_top):
            best = int(scratch.argmax())
            picks.append(best)
            scratch[best] = -np.inf
        return picks
    candidates = np.argpartition(row, -n_top)[-n_top:]
    return [int(t) for t in candidates[np.argsort(-row[candidates], kind="stable")]]
