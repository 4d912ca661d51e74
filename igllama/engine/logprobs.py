"""Log-probabilities of generated tokens (OpenAI's `logprobs` / `top_logprobs`).

They are the model's own distribution at each position: a log-softmax over
the raw logits of the decode that produced the token, before logit bias,
penalties, temperature or truncation, as vLLM and OpenAI report them. Only
requests that ask pay for it (one pass over the vocabulary, ~0.5 ms a token
for the demo model's 262k entries); the others never read the logits here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import llama_cpp.llama_cpp as llama
import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's bound


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: int
    piece: bytes  # the bytes the token stands for (may be part of a UTF-8 character)
    logprob: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A generated token, its log-probability, and the most likely tokens at its position."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[TopLogprob, ...]  # most likely first; empty when top_logprobs is 0
    rank: int = 0  # 1 for the most likely token of the vocabulary; 0 where not computed


def token_logprob(
    ctx: llama.llama_context_p,
    output_index: int,
    n_vocab: int,
    token: int,
    n_top: int,
    piece: Callable[[int], bytes],
) -> TokenLogprob:
    """The entry for `token`, chosen from output `output_index` of the last decode."""
    logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, output_index), shape=(n_vocab,))
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))
    top: tuple[TopLogprob, ...] = ()
    if n_top > 0:
        best = np.argpartition(logits, -n_top)[-n_top:]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple(TopLogprob(int(i), piece(int(i)), float(logits[i]) - log_total) for i in best)
    return TokenLogprob(token, piece(token), float(logits[token]) - log_total, top)
