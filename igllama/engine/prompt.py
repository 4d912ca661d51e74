"""From a request to its prompt tokens, within bounds.

`Prompts` renders a chat request with the model's template and tokenizes
it, tokenizes raw text, and builds fill-in-the-middle prompts. Each of these
costs time that grows with what the client sent, so:

- the engine runs them off the event loop (`Engine.offload`);
- each first refuses text that could never fit the context, by length alone:
  no token is longer than the vocabulary's longest, so a text of n
  characters makes at least n / longest tokens;
- control tokens come from the template only (`control_text.py`), unless the
  server was started with `--special-in-content`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from igllama.engine.control_text import mask_strings
from igllama.engine.errors import InputError
from igllama.engine.infill import ExtraFile, check_token_ids, infill_prompt
from igllama.engine.messages import ChatMessage
from igllama.engine.model import Model
from igllama.engine.sequence import CompletionRequest
from igllama.engine.template import ChatTemplate, TemplateError
from igllama.engine.tool_calls import ToolCall
from igllama.engine.tools import ToolSpec


class PromptTooLongError(InputError):
    """The prompt does not fit in the context."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(
            f"the prompt has {n_prompt} tokens but the context holds {n_ctx}; "
            "shorten the conversation or start the server with a larger --ctx-size"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


class TextTooLongError(InputError):
    """More text than any prompt of the context could hold, refused before it is tokenized."""

    def __init__(self, what: str, n_chars: int, n_ctx: int, max_token_bytes: int, param: str | None) -> None:
        super().__init__(
            f"{what} {n_chars} characters: more than a prompt of {n_ctx} tokens can hold "
            f"(this model's longest token is {max_token_bytes} bytes); shorten it or start the "
            "server with a larger --ctx-size"
        )
        self.param = param


class Prompts:
    """A model's prompts: chat requests through its template, raw text, code infills."""

    def __init__(self, model: Model, template: ChatTemplate, n_ctx: int, special_in_content: bool = False) -> None:
        self.model = model
        self.template = template
        self.n_ctx = n_ctx
        self.special_in_content = special_in_content

    def tokens(self, request: CompletionRequest, no_think: bool) -> list[int]:
        """The tokenized prompt for `request` (its token ids, or its messages rendered); refuses
        one that cannot fit."""
        if request.prompt:
            tokens = list(request.prompt)
            if len(tokens) >= self.n_ctx:  # (before checking each id)
                raise PromptTooLongError(len(tokens), self.n_ctx)
            check_token_ids(self.model, tokens)
        else:
            tokens = self._chat_tokens(request, no_think)
            if not tokens:
                raise TemplateError("the chat template rendered an empty prompt")
        if len(tokens) >= self.n_ctx:
            raise PromptTooLongError(len(tokens), self.n_ctx)
        return tokens

    def _chat_tokens(self, request: CompletionRequest, no_think: bool) -> list[int]:
        control = self.model.control_text
        if self.special_in_content or not control.found_in(_client_strings(request)):
            return self.model.tokenize_prompt(self.render(request, no_think))  # (nearly every request)
        masker = control.masker()
        masked = replace(request, messages=tuple(_masked_message(m, masker.mask) for m in request.messages),
                         tools=tuple(_masked_tool(t, masker.mask) for t in request.tools))
        return self.model.tokenize_pieces(masker.split(self.render(masked, no_think)))

    def render(self, request: CompletionRequest, no_think: bool) -> str:
        """The prompt text the chat template makes of the request's messages."""
        if len(request.messages) > self.n_ctx:  # (every chat template marks each turn with a token or more)
            raise InputError(f"{len(request.messages)} messages are more than a prompt of {self.n_ctx} tokens "
                             "can hold; shorten the conversation or start the server with a larger --ctx-size")
        self._check_size("the messages and tools hold", _request_chars(request), "messages")
        tools = request.offered_tools
        return self.template.render(
            request.messages,
            no_think=no_think,
            tools=tools,
            opening=request.tool_choice.forced_opening() if tools else "",
        )

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True, param: str = "prompt"
                 ) -> list[int]:
        """Token ids of `text` (BOS first where the model wants one, with `add_special`)."""
        self._check_size("the text has", len(text), param)
        return self.model.tokenize(text, add_special=add_special, parse_special=parse_special)

    def infill(self, prefix: str, suffix: str, extra: list[ExtraFile] | tuple[ExtraFile, ...] = ()) -> list[int]:
        """Token ids asking for the code between `prefix` and `suffix` (`NoFimError` without FIM tokens)."""
        n_chars = len(prefix) + len(suffix) + sum(len(f.filename) + len(f.text) for f in extra)
        self._check_size("the code around the gap has", n_chars, None)  # (each dialect names its field)
        return infill_prompt(self.model, prefix, suffix, extra)

    def _check_size(self, what: str, n_chars: int, param: str | None) -> None:
        if n_chars > self.n_ctx * self.model.max_token_bytes:
            raise TextTooLongError(what, n_chars, self.n_ctx, self.model.max_token_bytes, param)


def _client_strings(request: CompletionRequest) -> list[Any]:
    """Every string of the request that a client wrote and the template renders."""
    strings: list[Any] = []
    for message in request.messages:
        strings += [message.content, message.tool_call_id]
        for call in message.tool_calls:
            strings += [call.name, call.id, call.arguments, _parsed(call.arguments)]
    for tool in request.tools:
        strings += [tool.name, tool.description, tool.parameters]
    return strings


def _parsed(arguments: str) -> Any:
    """A call's arguments as templates see them: parsed, where an escaped `\\u003c` is a `<`."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _masked_message(message: ChatMessage, mask: Callable[[str], str]) -> ChatMessage:
    calls = tuple(ToolCall(mask(c.name), _masked_arguments(c.arguments, mask), mask(c.id))
                  for c in message.tool_calls)
    return replace(message, content=mask(message.content), tool_calls=calls, tool_call_id=mask(message.tool_call_id))


def _masked_arguments(arguments: str, mask: Callable[[str], str]) -> str:
    parsed = _parsed(arguments)
    if parsed is arguments:
        return mask(arguments)
    return json.dumps(mask_strings(parsed, mask), ensure_ascii=False)


def _masked_tool(tool: ToolSpec, mask: Callable[[str], str]) -> ToolSpec:
    return ToolSpec(mask(tool.name), mask(tool.description), mask_strings(tool.parameters, mask))


def _request_chars(request: CompletionRequest) -> int:
    """The characters a client sent for the template to render: contents, calls and tools."""
    n = 0
    for message in request.messages:
        n += len(message.content) + sum(len(c.name) + len(c.arguments) for c in message.tool_calls)
    for tool in request.tools:
        n += len(tool.name) + len(tool.description) + len(json.dumps(tool.parameters))
    return n
