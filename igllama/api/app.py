"""The OpenAI API on top of the engine: routes, handlers, auth and the access log.

Data flows one way: a parsed HTTP request is validated into a typed engine
request (`requests`), the engine's events are shaped into OpenAI JSON
(`responses`), and the HTTP layer turns those into bytes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from igllama.api import responses
from igllama.api.choices import Reply, combined, interleave
from igllama.api.errors import RETRY_AFTER, APIError, from_engine
from igllama.api.requests import ChatCall, Defaults, parse_chat, parse_embeddings, parse_json
from igllama.api.tools import StreamedCalls, reply_calls
from igllama.engine import Engine, EngineError, Finished, GenerationStream, TextDelta
from igllama.http import EventStream, Request, Response, Router

access_log = logging.getLogger("igllama.access")
log = logging.getLogger("igllama.api")

AsyncHandler = Callable[[Request], Awaitable[Response | EventStream]]

HEALTH_OK = Response.json(200, {"status": "ok", "model": "loaded"})
_RETRY = ((b"Retry-After", str(RETRY_AFTER).encode()),)


@dataclass(frozen=True, slots=True)
class AppSettings:
    model_id: str
    max_tokens: int = 2048
    temperature: float = 0.7
    api_key: str | None = None


class App:
    """Serves the API; answers 503 until `set_engine` hands it a loaded engine,
    and again once `drain` is called or the engine stops serving."""

    def __init__(self, settings: AppSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.load_progress = 0.0
        self.draining = False
        self.created = responses.now()
        self.defaults = Defaults(settings.max_tokens, settings.temperature)
        self.router = Router()
        self.router.add("GET", "/health", self.health)
        self.router.add("GET", "/v1/models", self._guarded(self.list_models))
        self.router.add("POST", "/v1/chat/completions", self._guarded(self.chat_completions))
        self.router.add("POST", "/v1/embeddings", self._guarded(self.embeddings))

    def set_engine(self, engine: Engine) -> None:
        self.defaults = Defaults(self.settings.max_tokens, self.settings.temperature, engine.model.n_vocab)
        self.engine = engine

    def drain(self) -> None:
        """The server is stopping: health says so, new requests get 503, requests in flight go on."""
        self.draining = True

    # -- handlers

    def health(self, request: Request) -> Response:
        """Plain function: the HTTP layer calls it inline, the cheap path orchestrators poll."""
        if self.draining:
            return Response.json(503, {"status": "draining"}, headers=_RETRY)
        if self.engine is None:
            return Response.json(
                503, {"status": "loading", "model": "loading", "progress": round(self.load_progress, 3)}
            )
        problem = self.engine.health()
        if problem is not None:
            return Response.json(503, {"status": "error", "model": "failed", "error": problem})
        return HEALTH_OK

    async def list_models(self, request: Request) -> Response:
        return Response.json(200, responses.models(self.settings.model_id, self.created))

    async def chat_completions(self, request: Request) -> Response | EventStream:
        engine = self._engine()
        started = time.perf_counter()
        call = parse_chat(parse_json(request.body), self.defaults)
        try:
            streams = await engine.submit_choices(call.request, call.n)
        except EngineError as exc:
            raise from_engine(exc, "messages") from None
        model = call.model or self.settings.model_id
        if call.stream:
            return EventStream(self._stream(streams, call, model, request, started))
        wants_logprobs = call.request.logprobs is not None
        replies = [Reply(logprobs=[] if wants_logprobs else None) for _ in streams]
        status = 499  # unless the loop below ends otherwise: the client went away
        try:
            async for i, event in interleave(streams):
                replies[i].add(event)
            status = 200
        except EngineError as exc:
            error = from_engine(exc, "messages")
            status = error.status
            raise error from None
        finally:
            for stream in streams:
                await stream.aclose()
            if status != 200:
                self._log_access(request, status, started, None)
        ends = [reply.done for reply in replies]
        if None in ends:
            raise RuntimeError("the engine ended a completion without its final event")
        total = combined(ends)
        self._log_access(request, 200, started, total)
        choices = [
            responses.choice(
                i, reply.text, reply.done, reply.logprobs,
                reply_calls(reply.done.tool_calls, call.parallel_tool_calls), reply.reasoning,
            )
            for i, reply in enumerate(replies)
        ]
        body = responses.chat_completion(responses.completion_id(), responses.now(), model, choices, total)
        return Response.json(200, body)

    async def _stream(
        self, streams: list[GenerationStream], call: ChatCall, model: str, request: Request, started: float
    ) -> AsyncIterator[bytes]:
        cid, created = responses.completion_id(), responses.now()
        writers = [responses.ChunkWriter(cid, created, model, i) for i in range(len(streams))]
        calls = [StreamedCalls(call.parallel_tool_calls) for _ in streams]
        ends: list[Finished | None] = [None] * len(streams)
        total: Finished | None = None
        status = 499  # unless the stream ends otherwise: the client went away
        try:
            for chunks in writers:
                yield chunks.role()
            async for i, event in interleave(streams):
                chunks = writers[i]
                if isinstance(event, TextDelta):
                    if event.reasoning:
                        yield chunks.reasoning(event.reasoning)
                    if event.text or event.logprobs:
                        yield chunks.content(event.text, event.logprobs)
                    if event.calls and (pieces := calls[i].pieces(event.calls)):
                        yield chunks.tool_calls(pieces)
                    continue
                ends[i] = event
                if rest := calls[i].rest(event.tool_calls):
                    yield chunks.tool_calls(rest)
                yield chunks.finish(event)
            if None not in ends:
                total = combined(ends)
                if call.include_usage:
                    yield writers[0].usage(total)
            status = 200
            yield b"[DONE]"
        except Exception as exc:
            # The status line is long gone: report the failure in-band, as
            # OpenAI does, then end the stream the usual way.
            if isinstance(exc, EngineError):
                error = from_engine(exc, "messages")
            else:
                log.exception("streamed completion failed")
                error = APIError(500, "generation failed; see the server log")
            status = error.status
            yield error.body
            yield b"[DONE]"
        finally:
            for stream in streams:
                await stream.aclose()
            self._log_access(request, status, started, total)

    async def embeddings(self, request: Request) -> Response:
        engine = self._engine()
        started = time.perf_counter()
        call = parse_embeddings(parse_json(request.body))
        try:
            result = await engine.embed(call.inputs)
        except EngineError as exc:
            raise from_engine(exc, "input") from None
        except asyncio.CancelledError:
            self._log_access(request, 499, started, None)
            raise
        body = responses.embeddings(result, call.model or self.settings.model_id, call.base64)
        elapsed_ms = (time.perf_counter() - started) * 1000
        access_log.info(
            "%s %s 200 inputs=%d tokens=%d %.0f ms",
            request.method, request.path, len(result.vectors), result.prompt_tokens, elapsed_ms,
        )
        return Response(200, body)

    # -- plumbing

    def _engine(self) -> Engine:
        if self.draining:
            raise APIError(503, "the server is shutting down; send the request elsewhere or retry later",
                           code="shutting_down", retry_after=RETRY_AFTER)
        if self.engine is None:
            raise APIError(503, "the model is still loading; retry when GET /health answers 200",
                           retry_after=RETRY_AFTER)
        return self.engine

    def _guarded(self, handler: AsyncHandler) -> AsyncHandler:
        """API-key check and OpenAI-shaped errors around a handler."""
        expected = f"Bearer {self.settings.api_key}".encode() if self.settings.api_key else None

        async def guarded(request: Request) -> Response | EventStream:
            if expected is not None:
                given = (request.headers.get("authorization") or "").encode()
                if not hmac.compare_digest(given, expected):
                    return APIError(
                        401, "a valid API key is required: send Authorization: Bearer <key>", code="invalid_api_key"
                    ).response()
            try:
                return await handler(request)
            except APIError as exc:
                if exc.status != 503 or self.engine is not None:  # not the load-time polling
                    access_log.info("%s %s %d %s", request.method, request.path, exc.status, exc.message)
                return exc.response()

        return guarded

    def _log_access(self, request: Request, status: int, started: float, done: Finished | None) -> None:
        elapsed_ms = (time.perf_counter() - started) * 1000
        if done is None:
            what = "client went away" if status == 499 else "failed"
            access_log.info("%s %s %d %s, %.0f ms", request.method, request.path, status, what, elapsed_ms)
            return
        access_log.info(
            "%s %s %d prompt=%d cached=%d completion=%d %.1f tok/s %.0f ms",
            request.method, request.path, status, done.prompt_tokens, done.cached_tokens,
            done.completion_tokens, done.generation_tokens_per_s, elapsed_ms,
        )
