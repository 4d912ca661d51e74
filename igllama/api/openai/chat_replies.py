"""OpenAI response shapes: chat completions, stream chunks, embeddings, models.

Stream chunks are the hot path (one per token): everything but the delta's
text is serialised once per request, and the text goes through orjson.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson

from igllama.engine import EmbeddingResult, Finished, Progress, TokenLogprob
from igllama.version import __version__

# Which server build answered (OpenAI's `system_fingerprint`; llama-server sends its build_info there).
BUILD_INFO = f"igllama-{__version__}"

if TYPE_CHECKING:
    from igllama.api.app import Listed


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(done: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def timings(done: Finished) -> dict[str, Any]:
    """llama-server's `timings` object, which its clients and benchmarks read."""
    return {
        "cache_n": done.cached_tokens,
        "prompt_n": done.prompt_tokens - done.cached_tokens,
        "prompt_ms": done.prefill_ms,
        "prompt_per_token_ms": _per_token_ms(done.prefill_ms, done.prompt_tokens - done.cached_tokens),
        "prompt_per_second": done.prefill_tokens_per_s,
        "predicted_n": done.completion_tokens,
        "predicted_ms": done.generation_ms,
        # (the first token comes out of the prefill: the rest share the generation time)
        "predicted_per_token_ms": _per_token_ms(done.generation_ms, done.completion_tokens - 1),
        "predicted_per_second": done.generation_tokens_per_s,
        "draft_n": done.drafted,
        "draft_n_accepted": done.accepted,
    }


def _per_token_ms(ms: float, n: int) -> float:
    return ms / n if n > 0 else 0.0


def logprobs(entries: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    """OpenAI's `logprobs` object of a choice (or of a chunk's delta)."""
    return {
        "content": [
            {
                "token": entry.piece.decode("utf-8", errors="replace"),
                "logprob": entry.logprob,
                "bytes": list(entry.piece),
                "top_logprobs": [
                    {"token": top.piece.decode("utf-8", errors="replace"), "logprob": top.logprob,
                     "bytes": list(top.piece)}
                    for top in entry.top
                ],
            }
            for entry in entries
        ],
        "refusal": None,
    }


def choice(
    index: int, text: str, done: Finished,
    token_logprobs: list[TokenLogprob] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    reasoning: str = "",
) -> dict[str, Any]:
    """One choice of a whole reply; `token_logprobs` None when the request did not ask for them."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
    if reasoning:
        # `reasoning_content` as llama-server and DeepSeek send it, `reasoning` as vLLM and Ollama clients read it.
        message["reasoning_content"] = message["reasoning"] = reasoning
    return {
        "index": index,
        "message": message,
        "logprobs": None if token_logprobs is None else logprobs(token_logprobs),
        "finish_reason": done.finish_reason,
    }


def chat_completion(cid: str, created: int, model: str, choices: list[dict[str, Any]], total: Finished) -> dict[str, Any]:
    """A whole reply: its choices, and the `usage` and `timings` of all of them."""
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": BUILD_INFO,
        "choices": choices,
        "usage": usage(total),
        "timings": timings(total),
    }


class ChunkWriter:
    """The `chat.completion.chunk` payloads of one streamed completion."""

    __slots__ = ("_created", "_head", "_id", "_model")

    def __init__(self, cid: str, created: int, model: str, index: int = 0) -> None:
        self._id, self._created, self._model = cid, created, model
        envelope = orjson.dumps({"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                 "system_fingerprint": BUILD_INFO})
        self._head = envelope[:-1] + b',"choices":[{"index":%d,"delta":' % index

    def role(self) -> bytes:
        return self._head + b'{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}'

    def content(self, text: str, token_logprobs: tuple[TokenLogprob, ...] = ()) -> bytes:
        if token_logprobs:
            return (self._head + b'{"content":' + orjson.dumps(text) + b'},"logprobs":'
                    + orjson.dumps(logprobs(token_logprobs)) + b',"finish_reason":null}]}')
        return self._head + b'{"content":' + orjson.dumps(text) + b'},"logprobs":null,"finish_reason":null}]}'

    def reasoning(self, text: str) -> bytes:
        return self._head + b'{"reasoning_content":' + orjson.dumps(text) + b'},"logprobs":null,"finish_reason":null}]}'

    def tool_calls(self, calls: list[dict[str, Any]]) -> bytes:
        return self._head + b'{"tool_calls":' + orjson.dumps(calls) + b'},"logprobs":null,"finish_reason":null}]}'

    def finish(self, done: Finished) -> bytes:
        return self._head + b'{},"logprobs":null,"finish_reason":' + orjson.dumps(done.finish_reason) + b"}]}"

    def usage(self, done: Finished) -> bytes:
        return self._without_choices({"usage": usage(done), "timings": timings(done)})

    def progress(self, progress: Progress) -> bytes:
        """llama-server's `return_progress` chunk: how far the prompt's prefill has come."""
        return self._without_choices({"prompt_progress": prompt_progress(progress)})

    def _without_choices(self, fields: dict[str, Any]) -> bytes:
        return orjson.dumps({"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                             "model": self._model, "system_fingerprint": BUILD_INFO, "choices": [], **fields})


def prompt_progress(progress: Progress) -> dict[str, Any]:
    """llama-server's `prompt_progress`: prompt tokens in all, reused from the cache, in the KV cache now."""
    return {"total": progress.total, "cache": progress.cached, "processed": progress.processed,
            "time_ms": round(progress.elapsed_ms, 3)}


def embeddings(result: EmbeddingResult, model: str, as_base64: bool) -> bytes:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode() if as_base64 else vector,
        }
        for i, vector in enumerate(result.vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def models(listed: list[Listed], created: int) -> dict[str, Any]:
    """OpenAI's model list, with each model's state as llama-server's router reports it."""
    data = []
    for model in listed:
        status: dict[str, Any] = {"value": model.state}
        if model.error is not None:
            status["error"] = model.error
        data.append({"id": model.name, "object": "model", "created": created, "owned_by": "igllama",
                     "aliases": list(model.aliases), "status": status})
    return {"object": "list", "data": data}


def now() -> int:
    return int(time.time())

