"""Chat templates: from a list of messages to the prompt text the model expects.

A GGUF's `tokenizer.chat_template` is Jinja written by whoever published the
file, so it is rendered in jinja2's `ImmutableSandboxedEnvironment`: a
template that reaches for Python internals fails with `TemplateError`. A model
without a template falls back to one of llama.cpp's built-in formats, chosen
from its architecture.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import llama_cpp.llama_cpp as llama
from jinja2.sandbox import ImmutableSandboxedEnvironment

from igllama.engine.errors import InputError
from igllama.engine.messages import ChatMessage
from igllama.engine.tools import ToolSpec, template_message, written_out

EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"

# Built-in llama.cpp template names for architectures whose GGUFs often ship
# without a template; anything else falls back to chatml.
_BUILTIN_BY_ARCHITECTURE = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "llama": "llama3",
    "phi3": "phi3",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "mistral": "mistral-v7",
}


class TemplateError(InputError):
    """A chat template could not be loaded or rendered; the message says why."""


def builtin_template_names() -> list[str]:
    """The names of llama.cpp's built-in chat formats."""
    n = llama.llama_chat_builtin_templates(None, 0)
    names = (ctypes.c_char_p * n)()
    llama.llama_chat_builtin_templates(names, n)
    return [name.decode() for name in names if name]


class ChatTemplate:
    """Renders messages with a Jinja template or one of llama.cpp's built-in formats."""

    def __init__(
        self,
        *,
        jinja_source: str | None = None,
        builtin_name: str | None = None,
        bos_token: str = "",
        eos_token: str = "",
    ) -> None:
        if (jinja_source is None) == (builtin_name is None):
            raise ValueError("give exactly one of jinja_source and builtin_name")
        self.builtin_name = builtin_name
        self.source = jinja_source or ""  # the Jinja text ("" for a built-in format)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self._jinja: jinja2.Template | None = None
        # Whether the template itself speaks of reasoning blocks, and of tools.
        self.mentions_thinking = jinja_source is not None and (
            "<think>" in jinja_source or "enable_thinking" in jinja_source
        )
        self.knows_tools = jinja_source is not None and "tools" in jinja_source
        if jinja_source is not None:
            self._jinja = _compile(jinja_source)

    @property
    def description(self) -> str:
        return f"built-in '{self.builtin_name}'" if self.builtin_name else "jinja"

    def render(
        self,
        messages: Sequence[ChatMessage],
        *,
        no_think: bool = False,
        tools: Sequence[ToolSpec] = (),
        opening: str = "",
    ) -> str:
        """The prompt for `messages`, ending with the assistant's header.

        With `no_think`, the assistant turn opens with an empty think block, the
        llama.cpp way of telling a Qwen3-style model its reasoning is done,
        unless the template has already closed one (templates that honour
        `enable_thinking=False` do). `tools` are offered (see `tools.py`), and
        the reply is made to begin with `opening`.
        """
        has_tool_turns = any(m.tool_calls or m.role == "tool" for m in messages)
        if not self.knows_tools and (tools or has_tool_turns):
            messages, tools = written_out(messages, tools), ()
        if self._jinja is not None:
            prompt = self._render_jinja(self._jinja, messages, no_think, tools)
        else:
            prompt = self._render_builtin(self.builtin_name or "chatml", messages)
        if no_think and not prompt.rstrip().endswith("</think>"):
            prompt += EMPTY_THINK_BLOCK
        return prompt + opening

    def _render_jinja(
        self, template: jinja2.Template, messages: Sequence[ChatMessage], no_think: bool, tools: Sequence[ToolSpec]
    ) -> str:
        context: dict[str, Any] = {
            "messages": [template_message(m) for m in messages],
            "add_generation_prompt": True,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        if tools:
            context["tools"] = [tool.template_value() for tool in tools]
        if no_think:
            context["enable_thinking"] = False
        try:
            return template.render(context)
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a template can raise anything; never let it past as a 500 trace
            raise TemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from None

    def _render_builtin(self, name: str, messages: Sequence[ChatMessage]) -> str:
        # Keep the encoded strings alive while llama.cpp reads them.
        encoded = [(m.role.encode(), m.content.encode()) for m in messages]
        chat = (llama.llama_chat_message * len(encoded))()
        for item, (role, content) in zip(chat, encoded):
            item.role = role
            item.content = content
        size = sum(len(r) + len(c) for r, c in encoded) * 2 + 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama.llama_chat_apply_template(name.encode(), chat, len(encoded), True, buf, size)
            if n < 0:
                raise TemplateError(f"llama.cpp cannot apply the built-in template '{name}'")
            if n <= size:  # llama.cpp returns the full length even when it did not fit
                return buf.raw[:n].decode("utf-8", errors="replace")
            size = n


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template refused the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, ensure_ascii: bool = False) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"chat template has a syntax error (line {exc.lineno}): {exc.message}") from None


def is_inline_jinja(text: str) -> bool:
    """Whether a --chat-template is the template's text itself, as llama-server also takes it
    (a name or a path has no Jinja delimiters)."""
    return "{{" in text or "{%" in text


def load_template(model: Any, override: str | None = None) -> ChatTemplate:
    """The chat template for `model`: `override` (a built-in name, a Jinja
    file, or Jinja text), else the GGUF's own template, else a built-in format
    picked from the model's architecture (chatml when nothing fits)."""
    tokens = {"bos_token": model.bos_text, "eos_token": model.eos_text}
    if override:
        if override in builtin_template_names():
            return ChatTemplate(builtin_name=override, **tokens)
        path = Path(override)
        if path.is_file():
            try:
                source = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise TemplateError(f"cannot read chat template file {override}: {exc}") from None
            return ChatTemplate(jinja_source=source, **tokens)
        if is_inline_jinja(override):
            return ChatTemplate(jinja_source=override, **tokens)
        raise TemplateError(
            f"--chat-template {override!r} is neither a built-in template nor a file "
            f"(built-ins: {', '.join(builtin_template_names())})"
        )
    source = model.chat_template()
    if source:
        return ChatTemplate(jinja_source=source, **tokens)
    name = _BUILTIN_BY_ARCHITECTURE.get(model.architecture, "chatml")
    return ChatTemplate(builtin_name=name, **tokens)
