"""OpenAI's chat completions, embeddings and model list.

Requests are checked into the engine's neutral request (`chat_requests`);
events come back as OpenAI's JSON (`chat_replies`), whole or as SSE chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from igllama.api.choices import Outcome, Reply, combined, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import parse_body
from igllama.api.openai import chat_replies as responses
from igllama.api.openai.chat_requests import ChatCall, parse_chat, parse_embeddings
from igllama.api.openai.prompt_scores import vllm_prompt_logprobs
from igllama.api.tools import StreamedCalls, reply_calls
from igllama.engine import Engine, EngineError, Finished, GenerationStream, TextDelta
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App


def routes(app: App) -> None:
    for prefix in ("/v1", ""):  # llama-server answers OpenAI's routes without /v1 too
        app.add("GET", f"{prefix}/models", lambda request: list_models(app, request))
        app.add("POST", f"{prefix}/chat/completions", lambda request: chat_completions(app, request))
    # (/embeddings, without /v1, is llama-server's native shape there: igllama/api/llamacpp)
    app.add("POST", "/v1/embeddings", lambda request: embeddings(app, request))


def stream_error(error: APIError) -> list[bytes]:
    """A failure in the middle of an OpenAI stream: the error object, then the usual end."""
    return [error.body, b"[DONE]"]


async def list_models(app: App, request: Request) -> Response:
    return Response.json(200, responses.models(app.listing(), app.created))

async def chat_completions(app: App, request: Request) -> Response | EventStream:
    started = time.perf_counter()
    call = await parse_body(request.body, lambda data: parse_chat(data, app.defaults))

    async def start(engine: Engine) -> Response | EventStream:
        try:
            streams = await engine.submit_choices(call.request, call.n)
        except EngineError as exc:
            raise from_engine(exc, "messages") from None
        return await _reply(app, request, call, streams, started, engine)

    return await app.run(request, call.model, call.stream, start, stream_error)


async def _reply(app: App, request: Request, call: ChatCall, streams: list[GenerationStream], started: float,
                 engine: Engine) -> Response | EventStream:
    model = call.model or app.settings.model_id
    if call.stream:
        outcome = Outcome()
        frames = _chunks(streams, call, model, outcome)
        return EventStream(app.guard_stream(request, streams, started, "messages", frames, stream_error, outcome))
    replies, total = await app.gather(request, streams, started, call.request.logprobs is not None)
    if call.request.prompt_logprobs is not None:  # (grows with the prompt: built off the loop)
        return await engine.offload(_reply_with_prompt_logprobs, call, replies, model, total)
    body = responses.chat_completion(responses.completion_id(), responses.now(), model, _choices(call, replies), total)
    return Response.json(200, body)


def _choices(call: ChatCall, replies: list[Reply]) -> list[dict[str, Any]]:
    return [
        responses.choice(
            i, reply.text, reply.finished, reply.logprobs,
            reply_calls(reply.finished.tool_calls, call.parallel_tool_calls), reply.reasoning,
        )
        for i, reply in enumerate(replies)
    ]


def _reply_with_prompt_logprobs(call: ChatCall, replies: list[Reply], model: str, total: Finished) -> Response:
    """A whole reply with vLLM's top-level `prompt_logprobs` (scored by the first choice)."""
    body = responses.chat_completion(responses.completion_id(), responses.now(), model,
                                     _choices(call, replies), total)
    scores = replies[0].prompt
    body["prompt_logprobs"] = None if scores is None else vllm_prompt_logprobs(scores, call.request.prompt_logprobs or 0)
    return Response.json(200, body)


async def _chunks(streams: list[GenerationStream], call: ChatCall, model: str, outcome: Outcome
              ) -> AsyncIterator[bytes]:
    cid, created = responses.completion_id(), responses.now()
    writers = [responses.ChunkWriter(cid, created, model, i) for i in range(len(streams))]
    calls = [StreamedCalls(call.parallel_tool_calls) for _ in streams]
    ends: list[Finished | None] = [None] * len(streams)
    for chunks in writers:
        yield chunks.role()
    async for i, event in interleave(streams):
        chunks = writers[i]
        if isinstance(event, TextDelta):
            if event.progress is not None:
                yield chunks.progress(event.progress)
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
    outcome.total = combined(ends)
    if call.include_usage:
        yield writers[0].usage(outcome.total)
    yield b"[DONE]"


async def embeddings(app: App, request: Request) -> Response:
    started = time.perf_counter()
    call = await parse_body(request.body, parse_embeddings)
    engine = await app.engine(call.model)
    try:
        result = await engine.embed(call.inputs)
    except EngineError as exc:
        raise from_engine(exc, "input") from None
    except asyncio.CancelledError:
        app.log_access(request, 499, started, None)
        raise
    body = responses.embeddings(result, call.model or app.settings.model_id, call.base64)
    elapsed_ms = (time.perf_counter() - started) * 1000
    app.access_log.info(
        "%s %s 200 inputs=%d tokens=%d %.0f ms",
        request.method, request.path, len(result.vectors), result.prompt_tokens, elapsed_ms,
    )
    return Response(200, body)

