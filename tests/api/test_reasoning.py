"""A thinking model's reasoning goes to `reasoning_content`, its answer to `content`.

The demo model does not think, so the server gets a Jinja template that
opens a `<think>` block on the assistant turn (as thinking templates do),
and each request a grammar that makes the reply "reasoning</think>answer":
the same reply on any CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import ONE_THREAD, ServerProcess, chat, error_of, sse_chunks, start_process

TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n<think>\n{% endif %}"
)
REPLY = {"messages": [{"role": "user", "content": "Is the sea salty?"}], "max_tokens": 40,
         "grammar": 'root ::= "The sea holds dissolved minerals." "\\n</think>\\n\\n" "Yes, it is."'}


@pytest.fixture(scope="module")
def thinking(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("thinking")
    template = folder / "thinking.jinja"
    template.write_text(TEMPLATE)
    server = start_process([model_path, "--chat-template", str(template), "--temp", "0", *ONE_THREAD],
                           Path(folder) / "log")
    yield server
    server.stop()


def test_reasoning_and_answer_are_apart(thinking: ServerProcess) -> None:
    message = chat(thinking.url, REPLY).json()["choices"][0]["message"]
    assert message["content"] == "Yes, it is."
    assert message["reasoning_content"] == message["reasoning"] == "The sea holds dissolved minerals."


def test_streamed_reasoning_comes_as_reasoning_deltas(thinking: ServerProcess) -> None:
    chunks = sse_chunks(chat(thinking.url, {**REPLY, "stream": True}).content)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The sea holds dissolved minerals."
    assert "".join(d.get("content", "") for d in deltas) == "Yes, it is."
    first_answer = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert not any(d.get("reasoning_content") for d in deltas[first_answer:])


def test_reasoning_format_none_keeps_it_inline(thinking: ServerProcess) -> None:
    message = chat(thinking.url, {**REPLY, "reasoning_format": "none"}).json()["choices"][0]["message"]
    assert message["content"] == "The sea holds dissolved minerals.\n</think>\n\nYes, it is."
    assert "reasoning_content" not in message


def test_no_think_and_a_bad_format(thinking: ServerProcess) -> None:
    plain = chat(thinking.url, {"messages": REPLY["messages"], "max_tokens": 3,
                                "chat_template_kwargs": {"enable_thinking": False}}).json()
    assert "reasoning_content" not in plain["choices"][0]["message"]
    error = error_of(chat(thinking.url, {**REPLY, "reasoning_format": "verbose"}), 400)
    assert error["param"] == "reasoning_format"


def test_anthropic_thinking_comes_as_a_thinking_block(thinking: ServerProcess) -> None:
    import anthropic

    with anthropic.Anthropic(base_url=thinking.url, api_key="unused", max_retries=0) as claude:
        grammar = {"grammar": REPLY["grammar"]}
        message = claude.messages.create(model="m", max_tokens=40, messages=REPLY["messages"],
                                         thinking={"type": "enabled", "budget_tokens": 1024}, extra_body=grammar)
        with claude.messages.stream(model="m", max_tokens=40, messages=REPLY["messages"],
                                    thinking={"type": "enabled", "budget_tokens": 1024}, extra_body=grammar) as s:
            kinds = {event.type for event in s}
            final = s.get_final_message()
    for reply in (message, final):
        assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in reply.content] == [
            ("thinking", "The sea holds dissolved minerals."), ("text", "Yes, it is.")]
    assert "thinking" in kinds


def test_ollama_think_returns_the_thinking_apart(thinking: ServerProcess) -> None:
    import ollama

    sdk = ollama.Client(host=thinking.url)
    reply = sdk.chat(model="m", messages=REPLY["messages"], think=True, stream=False, options={"num_predict": 12})
    assert reply.message.thinking and "<think>" not in reply.message.content
    parts = list(sdk.chat(model="m", messages=REPLY["messages"], think=True, stream=True, options={"num_predict": 12}))
    assert "".join(p.message.thinking or "" for p in parts) and "<think>" not in "".join(
        p.message.content for p in parts)
