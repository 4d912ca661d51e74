"""What every dialect's handlers share: the models served, the API key, health,
errors in the dialect's shape, the whole-reply and streaming paths, the access log.

Data flows one way: each dialect's module (`openai`, `anthropic`, `ollama`,
`utility`) validates a parsed HTTP request into the engine's neutral
request, and writes the engine's events back in its own shape; the HTTP
layer turns those into bytes. Dialects add their routes to an `App`
(igllama/api/routes.py puts them together); this module knows none of them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

from igllama.api.choices import Outcome, Reply, combined, interleave
from igllama.api.errors import RETRY_AFTER, APIError, from_engine
from igllama.api.fields import Defaults, query_value
from igllama.api.metrics import Metrics
from igllama.engine import Engine, EngineError, Finished, GenerationStream, ModelNotFound
from igllama.engine.pool import EnginePool, ModelState, PooledModel
from igllama.http import EventStream, Request, Response, Router
from igllama.http.response import SSE

access_log = logging.getLogger("igllama.access")
log = logging.getLogger("igllama.api")

AsyncHandler = Callable[[Request], Awaitable[Response | EventStream]]

HEALTH_OK = Response.json(200, {"status": "ok", "model": "loaded"})
HEALTH_UP = Response.json(200, {"status": "ok"})  # several models, asked without the API key
_RETRY = ((b"Retry-After", str(RETRY_AFTER).encode()),)


class Listed(NamedTuple):
    """A served model as the model lists show it."""

    name: str
    aliases: tuple[str, ...]
    path: str
    state: str  # loaded, loading, unloaded, unloading or failed
    error: str | None  # why it failed to load
    engine: Engine | None  # when loaded


@dataclass(frozen=True, slots=True)
class AppSettings:
    model_id: str  # the default model's name
    max_tokens: int = 2048
    temperature: float = 0.7
    api_key: str | None = None
    responses_store: int = 256  # stored Responses API responses kept for previous_response_id
    metrics: bool = False  # GET /metrics (Prometheus)
    slots: bool = True  # GET /slots
    sse_ping: float = 5.0  # seconds without a frame after which an SSE stream gets a `: ping` comment; 0 never
    # The request defaults in full (sampling too); None: `max_tokens` and `temperature` over Defaults' own.
    defaults: Defaults | None = None
    api_keys: tuple[str, ...] = ()  # more keys accepted beside `api_key` (--api-key-file)
    ui: bool = True  # GET / gives browsers the chat page
    slot_save_path: str | None = None  # where POST /slots/{id}?action=save|restore keeps files; None: 501


class App:
    """Serves the routes dialects `add` for the models of an `EnginePool` (503 until
    `set_pool`), each request on the model it names; 503 again once `drain` is called."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.access_log = access_log
        self.pool: EnginePool | None = None
        self.load_progress = 0.0  # of the one model loading before the pool is set
        self.draining = False
        self.created = int(time.time())
        self.defaults = settings.defaults or Defaults(settings.max_tokens, settings.temperature)
        self._keys = [key.encode() for key in (settings.api_key, *settings.api_keys) if key]
        self.metrics = Metrics()
        self.router = Router()
        self.router.add("GET", "/health", self.health)

    def set_pool(self, pool: EnginePool) -> None:
        """Serve the pool's models (one model: once it is loaded)."""
        self.pool = pool

    def listing(self) -> list[Listed]:
        """Every served model and its state, for the model lists of each dialect."""
        if self.pool is None:
            return [Listed(self.settings.model_id, (), "", "loading", None, None)]
        return [Listed(m.name, m.spec.aliases, m.spec.config.model.path, m.state.value, m.error,
                       m.engine if m.state is ModelState.LOADED else None)
                for m in self.pool.models.values()]

    def drain(self) -> None:
        """The server is stopping: health says so, new requests get 503, requests in flight go on."""
        self.draining = True

    # -- handlers

    def health(self, request: Request) -> Response:
        """Plain function: the HTTP layer calls it inline, the cheap path orchestrators poll.

        One model: its health (503 while it loads). Several: 200 while the server is
        up; `?model=NAME` asks about one of them.

        The route is open, so with `--api-key` a caller without the key learns only
        whether the server is healthy: the same status code, but `?model=` is ignored
        and no model's name, count or error is told (a 404 would list the catalog)."""
        if self.draining:
            return Response.json(503, {"status": "draining"}, headers=_RETRY)
        pool = self.pool
        if pool is None:
            return Response.json(
                503, {"status": "loading", "model": "loading", "progress": round(self.load_progress, 3)}
            )
        detailed = self.has_key(request)
        requested = query_value(request.query, "model") if detailed else None
        if requested is None and not pool.single:
            if not detailed:
                return HEALTH_UP
            return Response.json(200, {"status": "ok", "models": len(pool.models), "loaded": len(pool.loaded())})
        try:
            model = pool.find(requested)
        except ModelNotFound as exc:
            return Response.json(404, {"status": "not_found", "error": str(exc)})
        return model_health(model, detailed)

    def has_key(self, request: Request) -> bool:
        """Whether the request carries the API key (`Authorization: Bearer`, or Anthropic's
        `x-api-key`), compared in constant time; True when the server has none."""
        if not self._keys:
            return True
        given = (request.headers.get("authorization") or "").encode()
        given_x = (request.headers.get("x-api-key") or "").encode()
        # Every key is compared, so the time taken does not tell which one nearly matched.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(given, b"Bearer " + key) | hmac.compare_digest(given_x, key)
        return matched

    # -- what every dialect's handlers share

    async def gather(
        self, request: Request, streams: list[GenerationStream], started: float, wants_logprobs: bool,
        param: str = "messages",
    ) -> tuple[list[Reply], Finished]:
        """Every choice's whole reply and their totals; an engine error becomes an `APIError`
        about `param`. The access log gets its line either way."""
        replies = [Reply(logprobs=[] if wants_logprobs else None) for _ in streams]
        status = 499  # unless the loop below ends otherwise: the client went away
        try:
            async for i, event in interleave(streams):
                replies[i].add(event)
            status = 200
        except EngineError as exc:
            error = from_engine(exc, param)
            status = error.status
            raise error from None
        finally:
            for stream in streams:
                await stream.aclose()
            if status != 200:
                self.log_access(request, status, started, None)
        total = combined([reply.done for reply in replies])
        self.log_access(request, 200, started, total)
        return replies, total

    async def guard_stream(
        self, request: Request, streams: list[GenerationStream], started: float, param: str,
        frames: AsyncIterator[bytes], error_frames: Callable[[APIError], list[bytes]], outcome: Outcome,
    ) -> AsyncIterator[bytes]:
        """`frames`, then: the status line is long gone, so a failure is reported
        in-band (`error_frames`, in the dialect's shape); the requests are
        cancelled if the client goes away, and the access log gets its line."""
        status = 499  # unless the stream ends otherwise: the client went away
        try:
            async for frame in frames:
                yield frame
            status = 200
        except Exception as exc:
            if isinstance(exc, EngineError):
                error = from_engine(exc, param)
            else:
                log.exception("streamed completion failed")
                error = APIError(500, "generation failed; see the server log")
            status = error.status
            for frame in error_frames(error):
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]
            for stream in streams:
                await stream.aclose()
            self.log_access(request, status, started, outcome.total)

    def model(self, requested: str | None) -> PooledModel:
        """The served model a request's `model` field names: 404 `model_not_found` listing them otherwise."""
        if self.draining:
            raise APIError(503, "the server is shutting down; send the request elsewhere or retry later",
                           code="shutting_down", retry_after=RETRY_AFTER)
        if self.pool is None:
            raise APIError(503, "the model is still loading; retry when GET /health answers 200",
                           retry_after=RETRY_AFTER)
        try:
            return self.pool.find(requested)
        except EngineError as exc:
            raise from_engine(exc, "model") from None

    async def engine(self, requested: str | None) -> Engine:
        """The engine of the requested model, loaded first if need be (the request waits).

        Once the model is loaded this returns without a suspension point: submit to
        the engine before awaiting anything else, and no unload can come in between."""
        model = self.model(requested)
        pool = self.pool
        # (A single model's first load answers 503 so that clients poll /health; its reload
        # after --sleep-idle-seconds makes the request wait instead, as llama-server's wake-up.)
        if pool is None or (pool.single and model.state is ModelState.LOADING and not model.loaded_at):
            raise APIError(503, "the model is still loading; retry when GET /health answers 200",
                           retry_after=RETRY_AFTER)
        try:
            return await pool.engine(requested)
        except EngineError as exc:
            raise from_engine(exc, "model") from None

    async def run(
        self, request: Request, requested: str | None, stream: bool,
        start: Callable[[Engine], Awaitable[Response | EventStream]],
        error_frames: Callable[[APIError], list[bytes]], *, content_type: bytes = SSE, framed: bool = True,
    ) -> Response | EventStream:
        """`start(engine)` on the requested model's engine. A streamed request whose model must
        load first gets its stream at once (keep-alive pings while the model loads), then
        `start`'s frames, or its error in-band (`error_frames`, in the dialect's shape)."""
        model = self.model(requested)
        if not stream or model.state is ModelState.LOADED or (self.pool is not None and self.pool.single):
            return await start(await self.engine(requested))
        return EventStream(self._after_load(request, requested, start, error_frames),
                           content_type=content_type, framed=framed)

    async def _after_load(
        self, request: Request, requested: str | None, start: Callable[[Engine], Awaitable[Response | EventStream]],
        error_frames: Callable[[APIError], list[bytes]],
    ) -> AsyncIterator[bytes]:
        started = time.perf_counter()
        try:
            result = await start(await self.engine(requested))
        except APIError as error:
            self.log_access(request, error.status, started, None)
            for frame in error_frames(error):
                yield frame
            return
        except asyncio.CancelledError:  # the client went away while the model loaded (the load goes on)
            self.log_access(request, 499, started, None)
            raise
        if not isinstance(result, EventStream):  # (`start` streams what was asked to stream)
            raise TypeError("a streamed request's handler answered without a stream")
        frames = result.events
        try:
            async for frame in frames:
                yield frame
        finally:
            await frames.aclose()  # type: ignore[attr-defined]

    def add(self, method: str, path: str, handler: AsyncHandler,
            errors: Callable[[APIError], Response] = APIError.response) -> None:
        """Serve `handler` behind the API key, its errors written by `errors` (the dialect's shape);
        each answer is counted in the metrics under `path`."""
        self.router.add(method, path, self._guarded(path, handler, errors))

    def _guarded(self, path: str, handler: AsyncHandler, errors: Callable[[APIError], Response]) -> AsyncHandler:
        """API-key check (`Authorization: Bearer`, or Anthropic's `x-api-key`) and errors in shape."""
        count = self.metrics.count_request
        ping = self.settings.sse_ping

        async def guarded(request: Request) -> Response | EventStream:
            if not self.has_key(request):
                count(path, 401)
                return errors(APIError(
                    401, "a valid API key is required: send Authorization: Bearer <key>", code="invalid_api_key"
                ))
            try:
                result = await handler(request)
            except APIError as exc:
                if exc.status != 503 or self.pool is not None:  # not the load-time polling
                    access_log.info("%s %s %d %s", request.method, request.path, exc.status, exc.message)
                count(path, exc.status)
                return errors(exc)
            if isinstance(result, EventStream):
                count(path, 200)
                # Proxies with idle timeouts cut a stream that is silent while it waits or prefills.
                return replace(result, keepalive=ping) if ping and not result.keepalive else result
            count(path, result.status)
            return result

        return guarded

    def log_access(self, request: Request, status: int, started: float, done: Finished | None) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if done is None:
            what = "client went away" if status == 499 else "failed"
            access_log.info("%s %s %d %s, %.0f ms", request.method, request.path, status, what, elapsed_ms)
            return
        self.metrics.observe_reply(done, elapsed_ms / 1000.0)
        drafts = f" drafted={done.drafted} accepted={done.accepted}" if done.drafted else ""
        access_log.info(
            "%s %s %d prompt=%d cached=%d completion=%d%s %.1f tok/s %.0f ms",
            request.method, request.path, status, done.prompt_tokens, done.cached_tokens,
            done.completion_tokens, drafts, done.generation_tokens_per_s, elapsed_ms,
        )


def model_health(model: PooledModel, detailed: bool = True) -> Response:
    """One model's /health: 200 when it serves (or can be loaded on demand), 503 while it
    loads or when its engine stopped, 500 when it failed to load. Not `detailed`: without
    the reason, which may name the model's file."""
    state = model.state
    if state is ModelState.LOADING:
        return Response.json(503, {"status": "loading", "model": "loading", "progress": round(model.progress, 3)})
    if state is ModelState.FAILED:
        reason = {"error": model.error} if detailed else {}
        return Response.json(500, {"status": "error", "model": "failed", **reason})
    if state is ModelState.LOADED and model.engine is not None:
        problem = model.engine.health()
        if problem is not None:
            reason = {"error": problem} if detailed else {}
            return Response.json(503, {"status": "error", "model": "failed", **reason})
        return HEALTH_OK
    return Response.json(200, {"status": "ok", "model": state.value})
