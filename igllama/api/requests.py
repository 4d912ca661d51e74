"""Validating OpenAI request bodies into the engine's typed requests.

Every refusal is an `APIError` (400) whose message names the offending
field, the way OpenAI's own API answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from igllama.api.errors import APIError
from igllama.api.output import parse_output_format
from igllama.api.tools import message_tool_calls, parse_tools
from igllama.engine import MAX_TOP_LOGPROBS, ChatMessage, CompletionRequest, SamplingParams

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOP_STRINGS = 16
MAX_CHOICES = 128  # OpenAI's bound on `n`; each choice is a request of its own in the queue
INT32_MAX = 2**31 - 1  # llama.cpp takes top_k as int32_t: a larger value would wrap


@dataclass(frozen=True, slots=True)
class Defaults:
    """Server-side defaults and caps from the command line."""

    max_tokens: int = 2048
    temperature: float = 0.7
    n_vocab: int = 0  # for logit_bias token ids; 0 skips the check


@dataclass(frozen=True, slots=True)
class ChatCall:
    request: CompletionRequest
    stream: bool
    include_usage: bool
    model: str | None
    parallel_tool_calls: bool = True
    n: int = 1  # choices of the same prompt


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    inputs: list[str | list[int]]
    base64: bool
    model: str | None


def parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        raise APIError(400, "the request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    return data


def parse_chat(data: dict[str, Any], defaults: Defaults) -> ChatCall:
    messages = _messages(data.get("messages"))
    tools, tool_choice = parse_tools(data)
    n = _integer(data, "n", 1, 1, MAX_CHOICES)
    max_tokens = _integer(data, "max_completion_tokens", None, 1)
    if max_tokens is None:
        max_tokens = _integer(data, "max_tokens", None, 1)
    max_tokens = defaults.max_tokens if max_tokens is None else min(max_tokens, defaults.max_tokens)
    sampling = SamplingParams(
        temperature=_number(data, "temperature", defaults.temperature, 0.0, 2.0),
        top_k=_integer(data, "top_k", 40, 0, INT32_MAX),
        top_p=_number(data, "top_p", 0.95, 0.0, 1.0),
        min_p=_number(data, "min_p", 0.05, 0.0, 1.0),
        seed=_integer(data, "seed", None, None),
        repeat_penalty=_number(data, "repeat_penalty", 1.0, 0.0, 10.0, exclusive_min=True),
        presence_penalty=_number(data, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=_number(data, "frequency_penalty", 0.0, -2.0, 2.0),
        logit_bias=_logit_bias(data.get("logit_bias"), defaults.n_vocab),
    )
    stream = _boolean(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    include_usage = _boolean(options or {}, "include_usage", False, "stream_options.include_usage")
    request = CompletionRequest(
        messages=messages,
        max_tokens=max_tokens,
        sampling=sampling,
        stop=_stop(data.get("stop")),
        no_think=_no_think(data.get("chat_template_kwargs")),
        cache_prompt=_boolean(data, "cache_prompt", True),
        logprobs=_logprobs(data),
        tools=tools,
        tool_choice=tool_choice,
        grammar=parse_output_format(data),
        split_reasoning=_reasoning_format(data.get("reasoning_format")),
    )
    parallel = _boolean(data, "parallel_tool_calls", True)
    return ChatCall(request, stream, include_usage and stream, _model(data), parallel, n)


REASONING_FORMATS = ("auto", "deepseek", "none")


def _reasoning_format(raw: Any) -> bool | None:
    """Whether to split a thinking model's reasoning out (None: the server's --reasoning-format)."""
    if raw is None:
        return None
    if raw not in REASONING_FORMATS:
        raise APIError(400, f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}, not {raw!r}",
                       param="reasoning_format")
    return bool(raw != "none")


def _logprobs(data: dict[str, Any]) -> int | None:
    """None when not asked, else how many of the most likely tokens to list (OpenAI's rules)."""
    wanted = _boolean(data, "logprobs", False)
    n_top = _integer(data, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if n_top is not None and not wanted:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (n_top or 0) if wanted else None


def parse_embeddings(data: dict[str, Any]) -> EmbeddingCall:
    raw = data.get("input")
    if isinstance(raw, str):
        inputs: list[str | list[int]] = [raw]
    elif isinstance(raw, list) and raw and all(_is_int(t) for t in raw):
        inputs = [list(raw)]  # one input given as token ids
    elif isinstance(raw, list) and raw:
        inputs = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                inputs.append(item)
            elif isinstance(item, list) and all(_is_int(t) for t in item):
                inputs.append(list(item))
            else:
                raise APIError(400, f"input[{i}] must be a string or an array of token ids", param="input")
    else:
        raise APIError(
            400, "input must be a string, an array of strings, or an array of token id arrays (not empty)",
            param="input",
        )
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise APIError(400, f"encoding_format must be 'float' or 'base64', not {encoding!r}", param="encoding_format")
    return EmbeddingCall(inputs, encoding == "base64", _model(data))


def _messages(raw: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(raw, list):
        raise APIError(400, "messages is required and must be an array of messages", param="messages")
    if not raw:
        raise APIError(400, "messages must hold at least one message", param="messages")
    messages = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise APIError(400, f"{where} must be an object with role and content", param=where)
        role = item.get("role")
        if role not in ROLES:
            raise APIError(400, f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", param=f"{where}.role")
        calls = message_tool_calls(item, where) if role == "assistant" else ()
        call_id = ""
        if role == "tool":
            call_id = item.get("tool_call_id") or ""
            if not isinstance(call_id, str):
                raise APIError(400, f"{where}.tool_call_id must be a string", param=f"{where}.tool_call_id")
        role = "system" if role == "developer" else role
        messages.append(ChatMessage(role, _content(item, where, role), calls, call_id))
    return tuple(messages)


def _content(item: dict[str, Any], where: str, role: str) -> str:
    content = item.get("content")
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(
                    400, f"{where}.content[{j}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); "
                    "this server handles text only", param=f"{where}.content",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{where}.content must be a string or an array of text parts", param=f"{where}.content")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(
    data: dict[str, Any], name: str, default: int | None, minimum: int | None, maximum: int | None = None
) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise APIError(400, f"{name} must be an integer, not {value!r}", param=name)
    if minimum is not None and value < minimum:
        raise APIError(400, f"{name} must be at least {minimum}, not {value}", param=name)
    if maximum is not None and value > maximum:
        raise APIError(400, f"{name} must be at most {maximum}, not {value}", param=name)
    return value


def _number(
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


def _boolean(data: dict[str, Any], name: str, default: bool, label: str | None = None) -> bool:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        label = label or name
        raise APIError(400, f"{label} must be true or false, not {value!r}", param=label)
    return value


def _stop(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,) if raw else ()
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw) and len(raw) <= MAX_STOP_STRINGS:
        return tuple(s for s in raw if s)
    raise APIError(400, f"stop must be a string or an array of at most {MAX_STOP_STRINGS} strings", param="stop")


def _logit_bias(raw: Any, n_vocab: int) -> tuple[tuple[int, float], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise APIError(400, "logit_bias must be an object mapping token ids to numbers", param="logit_bias")
    biases = []
    for key, value in raw.items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias key {key!r} is not a token id", param="logit_bias") from None
        if token < 0 or (n_vocab and token >= n_vocab):
            raise APIError(400, f"logit_bias token id {token} is outside the vocabulary (0..{n_vocab - 1})",
                           param="logit_bias")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias for token {token} must be a number from -100 to 100", param="logit_bias")
        biases.append((token, float(value)))
    return tuple(biases)


def _no_think(raw: Any) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise APIError(400, "chat_template_kwargs must be an object", param="chat_template_kwargs")
    enable = raw.get("enable_thinking")
    if enable is None:
        return None
    if not isinstance(enable, bool):
        raise APIError(400, "chat_template_kwargs.enable_thinking must be true or false",
                       param="chat_template_kwargs.enable_thinking")
    return not enable


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise APIError(400, "model must be a string", param="model")
    return model
