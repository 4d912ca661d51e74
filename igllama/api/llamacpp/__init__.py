"""llama-server's native dialect: `/completion` (and `/completions`), `/infill`, `/embedding`
(and `/embeddings`), `/v1/health`, and the 501s llama-server answers for what igllama lacks.

Errors on these routes take llama-server's shape (errors.py). Its utility
routes (`/tokenize`, `/props`, `/slots`, `/metrics`) are in utility.py and
slots.py; OpenAI's routes answer with and without `/v1` (igllama/api/openai).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from igllama.api.llamacpp.completion import completion
from igllama.api.llamacpp.embedding import embedding
from igllama.api.llamacpp.errors import native_response, not_supported
from igllama.api.llamacpp.infill import infill

if TYPE_CHECKING:
    from igllama.api.app import App
    from igllama.http import Request, Response


def routes(app: App) -> None:
    app.router.add("GET", "/v1/health", app.health)  # (open like /health: orchestrators poll it)
    # llama-server answers /completions and /embeddings (without /v1) natively too, OpenAI's shapes only under /v1.
    for path in ("/completion", "/completions"):
        app.add("POST", path, lambda request: completion(app, request), native_response)
    app.add("POST", "/infill", lambda request: infill(app, request), native_response)
    app.add("POST", "/embedding", lambda request: embedding(app, request), native_response)
    app.add("POST", "/embeddings", lambda request: embedding(app, request), native_response)
    rerank = _refuse("reranking needs a reranker model's scores, which igllama does not compute")
    for path in ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking"):
        app.add("POST", path, rerank, native_response)
    app.add("POST", "/props", _refuse("changing global properties is not supported; restart the server "
                                      "with other flags"), native_response)


def _refuse(why: str) -> Callable[[Request], Awaitable[Response]]:
    async def refuse(request: Request) -> Response:
        raise not_supported(why)

    return refuse
