"""OpenAI's legacy text completions (`/v1/completions`).

No chat template: the prompt (text or token ids) is continued as it is, or,
with a `suffix`, the code model is asked for what goes between prefix and
suffix with its fill-in-the-middle tokens (llama-server's `/infill` is in
igllama/api/llamacpp).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.choices import Outcome, Reply, combined, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import (
    MAX_CHOICES,
    boolean,
    integer,
    max_tokens_of,
    model_name,
    parse_body,
    sampling_params,
    stop_strings,
)
from igllama.api.lora import lora_field
from igllama.api.openai import chat_replies as responses
from igllama.api.openai.chat import stream_error
from igllama.api.openai.prompt_scores import legacy_logprobs, vllm_prompt_logprobs
from igllama.api.prompts import Prompt, is_text, parse_prompts, prompt_text, prompt_tokens
from igllama.engine import (
    MAX_PROMPT_LOGPROBS,
    CompletionRequest,
    Engine,
    EngineError,
    Finished,
    GenerationStream,
    PromptScores,
    TextDelta,
    TokenLogprob,
)
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

MAX_LEGACY_LOGPROBS = 5  # OpenAI's bound for the completions endpoint


@dataclass(frozen=True, slots=True)
class TextCall:
    """A checked `/v1/completions` body: its prompts (text or token ids) and how to answer."""

    prompts: list[Prompt]
    suffix: str | None
    request: CompletionRequest  # without its prompt, which each of `prompts` fills in
    n: int
    echo: bool
    stream: bool
    include_usage: bool
    model: str | None
    scored: bool = False  # echo with logprobs: the prompt's tokens lead the choice's logprobs
    prompt_logprobs: int | None = None  # vLLM's prompt_logprobs: alternatives per prompt position

    @property
    def wants_scores(self) -> bool:
        return self.request.prompt_logprobs is not None


def routes(app: App) -> None:
    # (/completions, without /v1, is llama-server's native /completion: igllama/api/llamacpp)
    app.add("POST", "/v1/completions", lambda request: completions(app, request))


def parse_completion(data: dict[str, Any], app: App) -> TextCall:
    prompts = parse_prompts(data.get("prompt"))
    suffix = data.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise APIError(400, "suffix must be a string", param="suffix")
    if suffix is not None and not all(is_text(p) for p in prompts):
        raise APIError(400, "suffix needs the prompt as text, not token ids", param="suffix")
    logprobs = integer(data, "logprobs", None, 0, MAX_LEGACY_LOGPROBS)
    echo = boolean(data, "echo", False)
    prompt_logprobs = integer(data, "prompt_logprobs", None, 0, MAX_PROMPT_LOGPROBS)  # vLLM's extension
    scored = echo and logprobs is not None  # the echoed prompt's tokens come with their logprobs
    # The prompt scored with the most alternatives either shape lists (each takes its share).
    n_prompt_top = max(logprobs if scored else -1, -1 if prompt_logprobs is None else prompt_logprobs)
    stream = boolean(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    request = CompletionRequest(
        messages=(),
        # max_tokens 0 (score or echo the prompt, generate nothing) as OpenAI's API allowed it with echo.
        max_tokens=max_tokens_of(data, app.defaults, "max_tokens",
                                 minimum=0 if echo or prompt_logprobs is not None else 1),
        sampling=sampling_params(data, app.defaults),
        stop=stop_strings(data.get("stop")),
        cache_prompt=boolean(data, "cache_prompt", True),
        logprobs=logprobs,
        split_reasoning=False,
        return_progress=boolean(data, "return_progress", False) and stream,
        lora=lora_field(data),
        prompt_logprobs=n_prompt_top if n_prompt_top >= 0 else None,
        prompt_ranks=prompt_logprobs is not None,
        end_logprob=scored,
    )
    return TextCall(
        prompts, suffix, request, integer(data, "n", 1, 1, MAX_CHOICES), echo, stream,
        boolean(options or {}, "include_usage", False, "stream_options.include_usage") and stream,
        model_name(data), scored, prompt_logprobs,
    )


async def completions(app: App, request: Request) -> Response | EventStream:
    started = time.perf_counter()
    call = await parse_body(request.body, lambda data: parse_completion(data, app))
    return await app.run(request, call.model, call.stream,
                         lambda engine: _complete(app, request, call, started, engine), stream_error)


async def _complete(app: App, request: Request, call: TextCall, started: float, engine: Engine
                    ) -> Response | EventStream:
    streams: list[GenerationStream] = []
    echoes: list[str] = []
    try:
        for prompt in call.prompts:
            if call.suffix is not None:
                tokens = await engine.offload(engine.infill_prompt, str(prompt), call.suffix)
            else:
                tokens = await engine.offload(prompt_tokens, engine, prompt)
            if not tokens:
                raise APIError(400, "the prompt is empty", param="prompt")
            streams += await engine.submit_choices(replace(call.request, prompt=tuple(tokens)), call.n)  # checks the ids
            echo = await engine.offload(prompt_text, engine, prompt) if call.echo else ""
            echoes += [echo] * call.n
    except EngineError as exc:
        for stream in streams:
            await stream.aclose()
        raise from_engine(exc, "suffix" if call.suffix is not None else "prompt") from None
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    model = call.model or app.settings.model_id
    cid, created = f"cmpl-{uuid.uuid4().hex}", responses.now()
    if call.stream:
        outcome = Outcome()
        frames = _chunks(streams, echoes, call, cid, created, model, outcome)
        return EventStream(app.guard_stream(request, streams, started, "prompt", frames, stream_error, outcome))
    replies, total = await app.gather(request, streams, started, call.request.logprobs is not None, "prompt")
    if call.wants_scores:  # a reply that grows with the prompts' length and alternatives: built off the loop
        return await engine.offload(_scored_reply, call, echoes, replies, cid, created, model, total)
    choices = [
        _choice(i, echoes[i] + reply.text, reply.done,
                None if reply.logprobs is None else legacy_logprobs(None, None, 0, reply.logprobs, len(echoes[i])))
        for i, reply in enumerate(replies)
    ]
    return Response.json(200, _completion(cid, created, model, choices, total))


def _scored_reply(call: TextCall, echoes: list[str], replies: list[Reply], cid: str, created: int, model: str,
                  total: Finished) -> Response:
    """The whole reply of a request that asked for its prompts' log-probabilities: each choice
    takes them from the first choice of its prompt, which scored it."""
    choices = []
    for i, reply in enumerate(replies):
        prompt = call.prompts[i // call.n]
        scores = replies[i - i % call.n].prompt
        choices.append(_scored_choice(i, call, echoes[i], reply.text, reply.done, scores,
                                      prompt if isinstance(prompt, str) else None, reply.logprobs or []))
    return Response.json(200, _completion(cid, created, model, choices, total))


def _scored_choice(index: int, call: TextCall, echo: str, text: str, done: Finished | None,
                   scores: PromptScores | None, prompt: str | None,
                   generated: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> dict[str, Any]:
    logprobs = None
    if call.request.logprobs is not None:
        logprobs = legacy_logprobs(scores if call.scored else None, prompt, call.request.logprobs, generated,
                                   len(echo))
    choice = _choice(index, echo + text, done, logprobs)
    if call.prompt_logprobs is not None and scores is not None:
        choice["prompt_logprobs"] = vllm_prompt_logprobs(scores, call.prompt_logprobs)
    return choice


def _choice(index: int, text: str, done: Finished | None, logprobs: dict[str, Any] | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs,
            "finish_reason": done.finish_reason if done is not None else None}


def _completion(cid: str, created: int, model: str, choices: list[dict[str, Any]], total: Finished | None,
                ) -> dict[str, Any]:
    body: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model,
                            "system_fingerprint": responses.BUILD_INFO, "choices": choices}
    if total is not None:
        body["usage"] = responses.usage(total)
        body["timings"] = responses.timings(total)
    return body


async def _chunks(streams: list[GenerationStream], echoes: list[str], call: TextCall, cid: str, created: int,
                  model: str, outcome: Outcome) -> AsyncIterator[bytes]:
    ends: list[Finished | None] = [None] * len(streams)
    offsets = [len(echo) for echo in echoes]
    for i, echo in enumerate(echoes):
        if echo and not call.wants_scores:  # (else with the prompt's scores, when they come)
            yield orjson.dumps(_completion(cid, created, model, [_choice(i, echo, None, None)], None))
    async for i, event in interleave(streams):
        if isinstance(event, TextDelta) and event.prompt is not None:
            # The first choice of a prompt scored it: its scores open every choice of that prompt.
            prompt = call.prompts[i // call.n]
            for j in range(i, i + call.n):
                choice = _scored_choice(j, call, echoes[j], "", None, event.prompt,
                                        prompt if isinstance(prompt, str) else None, ())
                yield orjson.dumps(_completion(cid, created, model, [choice], None))
        if isinstance(event, TextDelta):
            if event.progress is not None:
                yield orjson.dumps({**_completion(cid, created, model, [], None),
                                    "prompt_progress": responses.prompt_progress(event.progress)})
            if event.text or event.logprobs:
                logprobs = (legacy_logprobs(None, None, 0, event.logprobs, offsets[i])
                            if call.request.logprobs is not None else None)
                offsets[i] += len(event.text)
                yield orjson.dumps(_completion(cid, created, model, [_choice(i, event.text, None, logprobs)], None))
            continue
        ends[i] = event
        yield orjson.dumps(_completion(cid, created, model, [_choice(i, "", event, None)], None))
    outcome.total = combined(ends)
    if call.include_usage:
        body = _completion(cid, created, model, [], outcome.total)
        yield orjson.dumps(body)
    yield b"[DONE]"
