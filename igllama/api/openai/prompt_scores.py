"""A prompt's log-probabilities in the two shapes clients read them.

- OpenAI's legacy completions with `echo` and `logprobs`: the prompt's tokens
  lead the choice's parallel lists, the first with a `null` logprob and `null`
  alternatives (nothing precedes it), as OpenAI's API answered. Evaluation
  harnesses (lm-eval's `local-completions`) read these.
- vLLM's `prompt_logprobs` extension: one entry per prompt token, `null` for
  the first, else `{token_id: {logprob, rank, decoded_token}}` holding the
  token itself and its `prompt_logprobs` most likely alternatives.

Pieces are the tokens' text with special tokens written out, so that the echoed
tokens of a token-id prompt join to its detokenized text; a BOS the tokenizer
added to a text prompt (not in the text) shows as "".
"""

from __future__ import annotations

from typing import Any

from igllama.engine import PromptScores, TokenLogprob


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def first_piece(scores: PromptScores, prompt: str | None) -> str:
    """The first prompt token's text; "" for a BOS added to a text `prompt` that does not hold it."""
    text = _text(scores.first_piece)
    return "" if prompt is not None and not prompt.startswith(text) else text


def legacy_lists(scores: PromptScores, prompt: str | None, n_top: int
                 ) -> tuple[list[str], list[float | None], list[dict[str, float] | None]]:
    """The prompt's part of the legacy `tokens`, `token_logprobs` and `top_logprobs` lists."""
    tokens: list[str] = [first_piece(scores, prompt)]
    logprobs: list[float | None] = [None]
    tops: list[dict[str, float] | None] = [None]
    for entry in scores.entries:
        tokens.append(_text(entry.piece))
        logprobs.append(entry.logprob)
        tops.append({_text(top.piece): top.logprob for top in entry.top[:n_top]})
    return tokens, logprobs, tops


def legacy_logprobs(scores: PromptScores | None, prompt: str | None, n_top: int,
                    generated: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    """A choice's legacy `logprobs` object: the echoed prompt's tokens (when `scores`), then the
    generated ones; `offset` is where the generated text starts in the choice's text."""
    tokens: list[str] = []
    logprobs: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    if scores is not None:
        tokens, logprobs, tops = legacy_lists(scores, prompt, n_top)
    offsets, at = [], 0
    for token in tokens:
        offsets.append(at)
        at += len(token)
    at = offset if scores is None else at
    for entry in generated:
        tokens.append(_text(entry.piece))
        logprobs.append(entry.logprob)
        tops.append({_text(top.piece): top.logprob for top in entry.top})
        offsets.append(at)
        at += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": offsets}


def vllm_prompt_logprobs(scores: PromptScores, n_top: int) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: per position the token itself and its `n_top` alternatives."""
    positions: list[dict[str, dict[str, Any]] | None] = [None]
    for entry in scores.entries:
        position = {str(entry.token): {"logprob": entry.logprob, "rank": entry.rank,
                                       "decoded_token": _text(entry.piece)}}
        for rank, top in enumerate(entry.top[:n_top], start=1):
            position.setdefault(str(top.token), {"logprob": top.logprob, "rank": rank,
                                                 "decoded_token": _text(top.piece)})
        positions.append(position)
    return positions
