"""Checked request fields, shared by every dialect.

Each reader takes the decoded JSON body and a field name and returns the
value or raises an `APIError` (400) whose message and `param` name the
field; the dialect decides how that error is written.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote_plus

import orjson

from igllama.api.errors import APIError
from igllama.engine import SamplingParams

MAX_JSON_VALUES = 1_000_000  # decoding a million small values takes ~0.2 s on this CPU
INLINE_BODY_BYTES = 64 * 1024  # larger bodies are parsed and checked off the event loop
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 1024  # one stop string's length: the reply's text is held back that far while it streams
MAX_LOGIT_BIAS = 1024  # tokens one request may bias
MAX_CHOICES = 128  # OpenAI's bound on `n`; each choice is a request of its own in the queue
INT32_MAX = 2**31 - 1  # llama.cpp takes top_k as int32_t: a larger value would wrap
MAX_REPEAT_LAST_N = 65536  # llama.cpp keeps a ring buffer of this many token ids per request

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-side defaults and caps from the command line."""

    max_tokens: int = 2048
    temperature: float = 0.7
    # llama-server's sampling defaults (--top-k, --seed, ...), for requests that name none
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None  # None: a random seed per request
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise APIError(400, "the request body is empty; send a JSON object")
    # Decoding holds the GIL for as long as it runs, on any thread, and its cost grows
    # with the number of values: bound that (by the commas, which over-count) first.
    if len(body) > MAX_JSON_VALUES and body.count(b",") > MAX_JSON_VALUES:
        raise APIError(400, f"the request body holds more than {MAX_JSON_VALUES} JSON values")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


async def parse_body(body: bytes, parse: Callable[[dict[str, Any]], T]) -> T:
    """`parse(parse_json(body))`: a dialect's validation of a request, whose cost grows with
    the body, so a large body is parsed off the event loop (the loop keeps the GIL between
    Python's switches, every 5 ms, while the executor thread works)."""
    if len(body) <= INLINE_BODY_BYTES:
        return parse(parse_json(body))
    return await asyncio.get_running_loop().run_in_executor(None, lambda: parse(parse_json(body)))


def max_tokens_of(data: dict[str, Any], defaults: Defaults, *names: str, minimum: int = 1) -> int:
    """The first of `names` given (an integer from `minimum` on), capped by the server's --max-tokens."""
    for name in names:
        value = integer(data, name, None, minimum)
        if value is not None:
            return min(value, defaults.max_tokens)
    return defaults.max_tokens


def sampling_params(data: dict[str, Any], defaults: Defaults) -> SamplingParams:
    """Sampling settings under their OpenAI / llama-server names."""
    return SamplingParams(
        temperature=number(data, "temperature", defaults.temperature, 0.0, 2.0),
        top_k=integer(data, "top_k", defaults.top_k, 0, INT32_MAX),
        top_p=number(data, "top_p", defaults.top_p, 0.0, 1.0),
        min_p=number(data, "min_p", defaults.min_p, 0.0, 1.0),
        seed=integer(data, "seed", defaults.seed, None),
        repeat_penalty=number(data, "repeat_penalty", defaults.repeat_penalty, 0.0, 10.0, exclusive_min=True),
        # (llama-server's -1, "the context size", is refused: llama.cpp's sampler reads it as 0, off)
        repeat_last_n=integer(data, "repeat_last_n", 64, 0, MAX_REPEAT_LAST_N),
        presence_penalty=number(data, "presence_penalty", defaults.presence_penalty, -2.0, 2.0),
        frequency_penalty=number(data, "frequency_penalty", defaults.frequency_penalty, -2.0, 2.0),
        logit_bias=logit_bias(data.get("logit_bias")),
    )


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(
    data: dict[str, Any], name: str, default: int | None, minimum: int | None, maximum: int | None = None
) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if not is_int(value):
        raise APIError(400, f"{name} must be an integer, not {value!r}", param=name)
    if minimum is not None and value < minimum:
        raise APIError(400, f"{name} must be at least {minimum}, not {value}", param=name)
    if maximum is not None and value > maximum:
        raise APIError(400, f"{name} must be at most {maximum}, not {value}", param=name)
    return value


def number(
    data: dict[str, Any], name: str, default: float, low: float, high: float, exclusive_min: bool = False
) -> float:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise APIError(400, f"{name} must be a number, not {value!r}", param=name)
    if value > high or value < low or (exclusive_min and value == low):
        bound = f"greater than {low}" if exclusive_min else f"at least {low}"
        raise APIError(400, f"{name} must be {bound} and at most {high}, not {value}", param=name)
    return float(value)


def boolean(data: dict[str, Any], name: str, default: bool, label: str | None = None) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        label = label or name
        raise APIError(400, f"{label} must be true or false, not {value!r}", param=label)
    return value


def stop_strings(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    strings = [raw] if isinstance(raw, str) else raw
    if isinstance(strings, list) and len(strings) <= MAX_STOP_STRINGS and all(isinstance(s, str) for s in strings):
        if any(len(s) > MAX_STOP_CHARS for s in strings):
            raise APIError(400, f"a stop string may have at most {MAX_STOP_CHARS} characters", param="stop")
        return tuple(s for s in strings if s)
    raise APIError(400, f"stop must be a string or an array of at most {MAX_STOP_STRINGS} strings", param="stop")


def logit_bias(raw: Any) -> tuple[tuple[int, float], ...]:
    """Token ids and biases; ids past the model's vocabulary are the engine's to refuse."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise APIError(400, "logit_bias must be an object mapping token ids to numbers", param="logit_bias")
    if len(raw) > MAX_LOGIT_BIAS:
        raise APIError(400, f"logit_bias may bias at most {MAX_LOGIT_BIAS} tokens, not {len(raw)}",
                       param="logit_bias")
    biases = []
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
        if token < 0:
            raise APIError(400, f"logit_bias token id {token} is not a token id", param="logit_bias")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias for token {token} must be a number from -100 to 100", param="logit_bias")
        biases.append((token, float(value)))
    return tuple(biases)


def model_name(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string", param="model")
    return model


def query_value(query: str, name: str) -> str | None:
    """One parameter of a URL's query string, percent-decoded; None when absent."""
    for pair in query.split("&") if query else ():
        key, _, value = pair.partition("=")
        if unquote_plus(key) == name:
            return unquote_plus(value)
    return None
