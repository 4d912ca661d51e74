"""Validating OpenAI request bodies into the engine's typed requests.

Every refusal is an `APIError` (400) whose message names the offending
field, the way OpenAI's own API answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from igllama.api.errors import APIError
from igllama.api.fields import (
    MAX_CHOICES,
    Defaults,
    boolean,
    integer,
    is_int,
    max_tokens_of,
    model_name,
    sampling_params,
    stop_strings,
)
from igllama.api.lora import lora_field
from igllama.api.output import parse_output_format
from igllama.api.tools import message_tool_calls, parse_tools
from igllama.engine import (
    MAX_EMBEDDING_INPUTS,
    MAX_PROMPT_LOGPROBS,
    MAX_TOP_LOGPROBS,
    ChatMessage,
    CompletionRequest,
)

ROLES = ("system", "user", "assistant", "developer", "tool")


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


def parse_chat(data: dict[str, Any], defaults: Defaults) -> ChatCall:
    messages = _messages(data.get("messages"))
    tools, tool_choice = parse_tools(data)
    n = integer(data, "n", 1, 1, MAX_CHOICES)
    max_tokens = max_tokens_of(data, defaults, "max_completion_tokens", "max_tokens")
    sampling = sampling_params(data, defaults)
    stream = boolean(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", param="stream_options")
    include_usage = boolean(options or {}, "include_usage", False, "stream_options.include_usage")
    # vLLM's extension: the rendered prompt's own log-probabilities, in the whole reply only.
    prompt_logprobs = integer(data, "prompt_logprobs", None, 0, MAX_PROMPT_LOGPROBS)
    if prompt_logprobs is not None and stream:
        raise APIError(400, "prompt_logprobs come with the whole reply; send it without stream",
                       param="prompt_logprobs")
    request = CompletionRequest(
        messages=messages,
        max_tokens=max_tokens,
        sampling=sampling,
        stop=stop_strings(data.get("stop")),
        no_think=_no_think(data.get("chat_template_kwargs")),
        cache_prompt=boolean(data, "cache_prompt", True),
        logprobs=_logprobs(data),
        tools=tools,
        tool_choice=tool_choice,
        grammar=parse_output_format(data),
        split_reasoning=_reasoning_format(data.get("reasoning_format")),
        return_progress=boolean(data, "return_progress", False) and stream,
        lora=lora_field(data),
        prompt_logprobs=prompt_logprobs,
        prompt_ranks=prompt_logprobs is not None,
    )
    parallel = boolean(data, "parallel_tool_calls", True)
    return ChatCall(request, stream, include_usage and stream, model_name(data), parallel, n)


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
    wanted = boolean(data, "logprobs", False)
    n_top = integer(data, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if n_top is not None and not wanted:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    return (n_top or 0) if wanted else None


def parse_embeddings(data: dict[str, Any]) -> EmbeddingCall:
    raw = data.get("input")
    if isinstance(raw, str):
        inputs: list[str | list[int]] = [raw]
    elif isinstance(raw, list) and raw and all(is_int(t) for t in raw):
        inputs = [list(raw)]  # one input given as token ids
    elif isinstance(raw, list) and raw:
        if len(raw) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"input may hold at most {MAX_EMBEDDING_INPUTS} items, not {len(raw)}", param="input")
        inputs = []
        for i, item in enumerate(raw):
            if isinstance(item, str):
                inputs.append(item)
            elif isinstance(item, list) and all(is_int(t) for t in item):
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
    return EmbeddingCall(inputs, encoding == "base64", model_name(data))


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
