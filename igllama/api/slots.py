"""`GET /slots` and `GET /metrics`: what operators watch, from the engine's
latest published stats (never from the engine's live state).

`/slots` follows llama-server's shape where it applies: per slot `id`,
`n_ctx`, `speculative`, `is_processing`, `id_task` (-1 when idle), and while
it serves a request the prompt's progress (`n_prompt_tokens`,
`..._processed`, `..._cache`), the sampling `params` and `next_token` with
`n_decoded` / `n_remain`; igllama adds `state` and `n_tokens_cached`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igllama.api.errors import APIError
from igllama.api.fields import query_value
from igllama.api.llamacpp.settings import generation_params
from igllama.api.metrics import CONTENT_TYPE
from igllama.api.utility import slot_n_ctx
from igllama.engine import SlotStats
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App


def routes(app: App) -> None:
    app.add("GET", "/slots", lambda request: slots(app, request))
    app.add("GET", "/metrics", lambda request: metrics(app, request))


async def slots(app: App, request: Request) -> Response:
    if not app.settings.slots:
        raise _unavailable("/slots", "without --no-slots")
    engine = await app.engine(query_value(request.query, "model"))  # (llama-server's router: ?model=)
    n_ctx = slot_n_ctx(engine)
    return Response.json(200, [_slot(slot, n_ctx) for slot in engine.stats.slots])


async def metrics(app: App, request: Request) -> Response:
    if not app.settings.metrics:
        raise _unavailable("/metrics", "with --metrics")
    stats = {listed.name: listed.engine.stats for listed in app.listing() if listed.engine is not None}
    # (llama-server's header; when the server started, for rate computations across restarts)
    return Response(200, app.metrics.exposition(stats), content_type=CONTENT_TYPE,
                    headers=[(b"Process-Start-Time-Unix", str(app.created).encode())])


def _slot(slot: SlotStats, n_ctx: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": slot.id,
        "n_ctx": n_ctx,  # llama-server's per-slot share (one unified KV pool: a lone request may use more)
        "speculative": slot.speculative,
        "is_processing": slot.is_processing,
        "id_task": slot.task_id if slot.task_id is not None else -1,
        "state": slot.status,
        "n_tokens_cached": slot.n_cached_tokens,  # what the slot's KV sequence holds (reused by the next prompt)
    }
    if not slot.is_processing:
        return body
    body.update(
        n_prompt_tokens=slot.n_prompt_tokens,
        n_prompt_tokens_processed=slot.n_prompt_processed,
        n_prompt_tokens_cache=slot.n_prompt_cached,
    )
    n_predict = slot.n_decoded + slot.n_remain
    body["params"] = (generation_params(slot.sampling, n_predict) if slot.sampling is not None
                      else {"n_predict": n_predict})
    body["next_token"] = [{"has_next_token": slot.n_remain > 0, "n_remain": slot.n_remain, "n_decoded": slot.n_decoded}]
    if slot.speculative:
        body["speculative_stats"] = {"draft_n": slot.n_drafted, "draft_n_accepted": slot.n_accepted}
    return body


def _unavailable(name: str, how: str) -> APIError:
    """An operator endpoint this server was started without (llama-server answers 501 too)."""
    return APIError(501, f"this server does not serve {name}; start it {how}", code="not_supported")
