"""llama-server's native `/completion`: its request fields in, its result shape out.

The prompt is continued as it is (no chat template), by the same engine
request OpenAI's `/v1/completions` builds (igllama/api/prompts.py reads the
prompt for both, igllama/api/fields.py the sampling fields). A feature of
llama-server that igllama does not have is refused with 501
`not_supported_error` when a request turns it on, never silently ignored.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson

from igllama.api.choices import Outcome, combined, interleave
from igllama.api.errors import APIError, from_engine
from igllama.api.fields import (
    INT32_MAX,
    MAX_LOGIT_BIAS,
    boolean,
    integer,
    is_int,
    logit_bias,
    model_name,
    parse_body,
    sampling_params,
    stop_strings,
)
from igllama.api.llamacpp import replies
from igllama.api.llamacpp.errors import from_fim, not_supported, stream_error
from igllama.api.llamacpp.settings import OFF, SAMPLERS, generation_params
from igllama.api.lora import lora_field
from igllama.api.output import parse_output_format
from igllama.api.prompts import Prompt, parse_prompts, prompt_tokens
from igllama.engine import (
    MAX_TOP_LOGPROBS,
    CompletionRequest,
    Engine,
    EngineError,
    Finished,
    GenerationStream,
    SamplingParams,
    TextDelta,
)
from igllama.http import EventStream, Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App
    from igllama.api.fields import Defaults


MAX_RESPONSE_FIELDS = 64


@dataclass(frozen=True, slots=True)
class NativeCall:
    """A checked `/completion` (or `/infill`) body."""

    request: CompletionRequest  # without its prompt, which each prompt fills in
    stream: bool
    n_probs: int  # 0: no completion_probabilities
    return_tokens: bool
    model: str | None
    settings: dict[str, Any]  # generation_settings, as the reply reports them
    fields: tuple[str, ...]  # response_fields: the result's fields to send ("a/b" for a nested one), () all


def parse_native(data: dict[str, Any], defaults: Defaults) -> NativeCall:
    """The fields `/completion` and `/infill` share (everything but the prompt)."""
    _refuse_unsupported(data)
    n_predict = _n_predict(data, defaults)
    n_probs = max(integer(data, "n_probs", 0, None, MAX_TOP_LOGPROBS), 0)  # (llama-server reads < 0 as 0)
    id_slot = integer(data, "id_slot", -1, -1, INT32_MAX)
    stream = boolean(data, "stream", False)
    sampling = replace(sampling_params({**data, "logit_bias": None}, defaults),
                       logit_bias=_logit_bias(data.get("logit_bias")))
    _check_samplers(data.get("samplers"), sampling)
    stop = stop_strings(data.get("stop"))
    grammar = parse_output_format(data)
    request = CompletionRequest(
        messages=(),
        max_tokens=n_predict,
        sampling=sampling,
        stop=stop,
        cache_prompt=boolean(data, "cache_prompt", True),
        logprobs=n_probs or None,
        grammar=grammar,
        split_reasoning=False,
        return_progress=boolean(data, "return_progress", False) and stream,
        return_tokens=True,  # (a stream's frames count them: tokens_predicted)
        slot_id=id_slot if id_slot >= 0 else None,
        lora=lora_field(data),
    )
    settings = generation_params(sampling, n_predict, stop=stop, stream=stream, n_probs=n_probs,
                                 grammar=grammar if isinstance(grammar, str) else "")
    return NativeCall(request, stream, n_probs, boolean(data, "return_tokens", False), model_name(data), settings,
                      _response_fields(data.get("response_fields")))


def _refuse_unsupported(data: dict[str, Any]) -> None:
    for name, off in OFF.items():
        value = data.get(name)
        if value is not None and value != off:
            raise not_supported(f"{name} is not supported by igllama's sampler; leave it out (or at {off!r})")
    for name in ("image_data", "multimodal_data"):
        if data.get(name):
            raise not_supported(f"{name} is not supported by this server")


# llama-server's letters and other names for the samplers igllama has; the others it checks are off (OFF).
_SAMPLER_NAMES = {"e": "penalties", "k": "top_k", "p": "top_p", "m": "min_p", "t": "temperature",
                  "top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "min-p": "min_p", "temp": "temperature"}


def _check_samplers(raw: Any, sampling: SamplingParams) -> None:
    """llama-server's `samplers` (names, or a string of letters): the chain and its order. igllama's is
    fixed, so a list that would sample differently is refused; llama-server's default list passes
    (its other samplers are off unless asked for, and asking is refused already)."""
    if raw is None:
        return
    if isinstance(raw, str):
        raw = list(raw)
    if not isinstance(raw, list) or len(raw) > 64 or not all(isinstance(name, str) for name in raw):
        raise APIError(400, "samplers must be an array of sampler names or a string of their letters",
                       param="samplers")
    given = [_SAMPLER_NAMES.get(name, name) for name in raw]
    ours = [name for name in given if name in SAMPLERS]
    active = {"penalties": sampling.has_penalties, "top_k": sampling.top_k > 0, "top_p": sampling.top_p < 1.0,
              "min_p": sampling.min_p > 0.0, "temperature": not sampling.is_greedy}
    missing = [name for name, on in active.items() if on and name not in ours]
    if missing:
        raise not_supported(f"samplers leaves out {', '.join(missing)}, which igllama always applies; "
                            f"leave samplers out")
    if ours != sorted(ours, key=SAMPLERS.index):
        raise not_supported(f"igllama samples in the order {', '.join(SAMPLERS)} only; leave samplers out")


def _response_fields(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_RESPONSE_FIELDS or not all(isinstance(f, str) for f in raw):
        raise APIError(400, f"response_fields must be an array of at most {MAX_RESPONSE_FIELDS} field names",
                       param="response_fields")
    return tuple(raw)


def _n_predict(data: dict[str, Any], defaults: Defaults) -> int:
    """`n_predict` (or `max_tokens`): -1 means as many as the server allows (its --max-tokens cap).
    0 gives one token, as llama-server does."""
    for name in ("n_predict", "max_tokens"):
        value = integer(data, name, None, -1)
        if value is not None and value >= 0:
            return min(max(value, 1), defaults.max_tokens)
    return defaults.max_tokens


def _logit_bias(raw: Any) -> tuple[tuple[int, float], ...]:
    """`logit_bias` as the shared reader takes it ({token: bias}), or in llama-server's list form
    `[[token, bias], ...]`, where a bias of `false` means never this token."""
    if not isinstance(raw, list):
        return logit_bias(raw)
    if len(raw) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias may bias at most {MAX_LOGIT_BIAS} tokens, not {len(raw)}",
                       param="logit_bias")
    biases: dict[str, Any] = {}
    banned: list[tuple[int, float]] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and is_int(pair[0]) and pair[0] >= 0):
            raise APIError(400, f"logit_bias[{i}] must be [token id, bias] (token ids only: igllama does not "
                           f"tokenize strings here)", param="logit_bias")
        if pair[1] is False:
            banned.append((pair[0], -math.inf))  # (llama-server's -INFINITY; the engine checks the id)
        else:
            biases[str(pair[0])] = pair[1]
    return logit_bias(biases) + tuple(banned)


async def completion(app: App, request: Request) -> Response | EventStream:
    started = time.perf_counter()

    def parse(data: dict[str, Any]) -> tuple[list[Prompt], NativeCall]:
        return parse_prompts(data.get("prompt")), parse_native(data, app.defaults)

    prompts, call = await parse_body(request.body, parse)

    async def start(engine: Engine) -> Response | EventStream:
        tokenized = []
        try:
            for prompt in prompts:
                tokenized.append(await engine.offload(prompt_tokens, engine, prompt))
        except EngineError as exc:
            raise from_engine(exc, "prompt") from None
        return await answer(app, request, engine, call, tokenized, started, "prompt")

    return await app.run(request, call.model, call.stream, start, stream_error)


async def answer(app: App, request: Request, engine: Engine, call: NativeCall, prompts: list[list[int]],
                 started: float, param: str) -> Response | EventStream:
    """Run one completion per prompt (token ids) and answer in llama-server's shape:
    one result, a list of them for several prompts, or a stream of frames."""
    if call.request.slot_id is not None and call.request.slot_id >= engine.config.n_slots:
        raise APIError(400, f"id_slot {call.request.slot_id} does not exist: this server has "
                       f"{engine.config.n_slots} slots (0 to {engine.config.n_slots - 1}, or -1 for any)",
                       param="id_slot")
    streams: list[GenerationStream] = []
    try:
        for tokens in prompts:
            streams += await engine.submit_choices(replace(call.request, prompt=tuple(tokens)), 1)  # checks the ids
        texts = [await engine.offload(engine.model.detokenize, tokens) for tokens in prompts]
    except EngineError as exc:
        for stream in streams:
            await stream.aclose()
        raise (from_fim(exc) or from_engine(exc, param)) from None
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    model = call.model or app.settings.model_id
    if call.stream:
        outcome = Outcome()
        frames = _frames(streams, call, model, texts, [len(tokens) for tokens in prompts], outcome)
        return EventStream(app.guard_stream(request, streams, started, param, frames, stream_error, outcome))
    gathered, _ = await app.gather(request, streams, started, call.n_probs > 0, param)
    results = [
        replies.selected(replies.result(i, reply.text, reply.tokens if call.return_tokens else [], reply.finished,
                                        model=model, settings=call.settings, prompt=texts[i], probs=reply.logprobs),
                         call.fields)
        for i, reply in enumerate(gathered)
    ]
    return Response.json(200, results[0] if len(results) == 1 else results)


async def _frames(streams: list[GenerationStream], call: NativeCall, model: str, prompts: list[str],
                  n_evaluated: list[int], outcome: Outcome) -> AsyncIterator[bytes]:
    """A frame per delta, then each prompt's result; llama-server ends its stream without [DONE]."""
    n_predicted = [0] * len(streams)
    ends: list[Finished | None] = [None] * len(streams)
    async for i, event in interleave(streams):
        if isinstance(event, TextDelta):
            if event.progress is not None:
                yield orjson.dumps(replies.progress_frame(i, event.progress))
            n_predicted[i] += len(event.tokens)
            if event.text or event.tokens:
                probs = event.logprobs if call.n_probs else None
                # (a stream's frames carry their token ids whether asked or not, as llama-server's do)
                yield orjson.dumps(replies.partial(i, event.text, event.tokens, n_predicted[i], n_evaluated[i],
                                                   probs))
            continue
        ends[i] = event
        yield orjson.dumps(replies.selected(replies.result(i, "", [], event, model=model, settings=call.settings,
                                                           prompt=prompts[i], probs=None), call.fields))
    outcome.total = combined(ends)
