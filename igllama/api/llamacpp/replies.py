"""llama-server's reply shapes for `/completion` and `/infill`: the whole result, the
stream's partial frames, and `completion_probabilities`."""

from __future__ import annotations

from typing import Any

from igllama.api.openai.chat_replies import prompt_progress, timings
from igllama.engine import Finished, Progress, TokenLogprob


def stop_type(done: Finished) -> str:
    """Why generation ended, in llama-server's words."""
    if done.stop_string:
        return "word"
    return "limit" if done.finish_reason == "length" else "eos"


def result(
    index: int, content: str, tokens: list[int], done: Finished, *, model: str, settings: dict[str, Any],
    prompt: str, probs: list[TokenLogprob] | None,
) -> dict[str, Any]:
    """The whole result (also the final frame of a stream, with empty `content` and `tokens`).
    `truncated` is always false: igllama refuses a prompt too long instead of cutting it."""
    body: dict[str, Any] = {
        "index": index,
        "content": content,
        "tokens": tokens,
        "id_slot": done.slot,
        "stop": True,
        "model": model,
        "tokens_predicted": done.completion_tokens,
        "tokens_evaluated": done.prompt_tokens,
        "generation_settings": settings,
        "prompt": prompt,
        "has_new_line": "\n" in content,
        "truncated": False,
        "stop_type": stop_type(done),
        "stopping_word": done.stop_string,
        # What the slot's KV cache holds once done: the prompt and the reply but its last token.
        "tokens_cached": done.prompt_tokens + max(done.completion_tokens - 1, 0),
        "timings": timings(done),
    }
    if probs is not None:
        body["completion_probabilities"] = probabilities(probs)
    return body


def selected(body: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """`response_fields`: only these fields of a result, each under its path (`generation_settings/n_predict`),
    those it lacks left out, as llama-server does; all of it when none are named."""
    if not fields:
        return body
    picked = {}
    for path in fields:
        value: Any = body
        for key in path.split("/"):
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            picked[path] = value
    return picked


def partial(index: int, content: str, tokens: list[int] | tuple[int, ...], n_predicted: int, n_evaluated: int,
            probs: tuple[TokenLogprob, ...] | None) -> dict[str, Any]:
    """One frame of a stream before the last (`id_slot` -1 there, as llama-server sends it)."""
    body: dict[str, Any] = {
        "index": index, "content": content, "tokens": list(tokens), "stop": False, "id_slot": -1,
        "tokens_predicted": n_predicted, "tokens_evaluated": n_evaluated,
    }
    if probs is not None:
        body["completion_probabilities"] = probabilities(probs)
    return body


def progress_frame(index: int, progress: Progress) -> dict[str, Any]:
    """A stream frame while the prompt is prefilled (`return_progress`)."""
    return {"index": index, "content": "", "tokens": [], "stop": False, "id_slot": -1, "tokens_predicted": 0,
            "tokens_evaluated": progress.total, "prompt_progress": prompt_progress(progress)}


def probabilities(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """`completion_probabilities`: each token's log-probability and the most likely at its place
    (the model's own distribution, before sampling, as llama-server's default reports it)."""
    return [
        {
            "id": entry.token, "token": entry.piece.decode("utf-8", errors="replace"), "bytes": list(entry.piece),
            "logprob": entry.logprob,
            "top_logprobs": [
                {"id": top.token, "token": top.piece.decode("utf-8", errors="replace"), "bytes": list(top.piece),
                 "logprob": top.logprob}
                for top in entry.top
            ],
        }
        for entry in entries
    ]
