"""llama-server's native `/embedding` (and `/embeddings`, which llama-server also answers
natively; OpenAI's shape is at `/v1/embeddings`).

The reply is a list with, for each input, `index` and `embedding`: a list of
vectors, one pooled vector here. igllama's embeddings are always pooled
(mean, or the model's own pooling) and L2-normalised, llama-server's default;
per-token vectors (llama-server's `--pooling none`) and other normalisations
are refused with 501 rather than answered in another form.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.errors import APIError, from_engine
from igllama.api.fields import integer, model_name, parse_body
from igllama.api.llamacpp.errors import not_supported
from igllama.api.prompts import Prompt, parse_prompts, prompt_tokens
from igllama.engine import MAX_EMBEDDING_INPUTS, Engine, EngineError
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

L2 = 2  # llama-server's embd_normalize for the Euclidean norm (its default)


def _parse(data: dict[str, Any]) -> tuple[list[Prompt], str | None]:
    name = "content" if "content" in data else "input"
    raw = data.get(name)
    if raw is None:
        raise APIError(400, '"input" or "content" must be provided', param="content")
    if integer(data, "embd_normalize", L2, None) != L2:
        raise not_supported("embd_normalize other than 2 is not supported: igllama's embeddings are "
                            "L2-normalised (llama-server's default)")
    return parse_prompts(raw, MAX_EMBEDDING_INPUTS, name), model_name(data)


async def embedding(app: App, request: Request) -> Response:
    started = time.perf_counter()
    prompts, model = await parse_body(request.body, _parse)
    engine = await app.engine(model)
    try:
        inputs = [p if isinstance(p, str) else await engine.offload(_ids, engine, p) for p in prompts]
        result = await engine.embed(inputs)
    except EngineError as exc:
        raise from_engine(exc, "content") from None
    except asyncio.CancelledError:
        app.log_access(request, 499, started, None)
        raise
    body = [{"index": i, "embedding": [vector]} for i, vector in enumerate(result.vectors)]
    app.access_log.info("%s %s 200 inputs=%d tokens=%d %.0f ms", request.method, request.path, len(inputs),
                        result.prompt_tokens, (time.perf_counter() - started) * 1000)
    return Response(200, orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY))


def _ids(engine: Engine, prompt: Prompt) -> list[int]:
    return prompt_tokens(engine, prompt)
