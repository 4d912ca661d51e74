"""Chat templates: built-in fallback, Jinja in a sandbox, no-think (tier 1 + the real model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    ModelConfig,
    TemplateError,
)
from igllama.engine.model import Model
from igllama.engine.template import EMPTY_THINK_BLOCK, ChatTemplate, load_template
from tests.engine.conftest import ask

CHAT = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")]

QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_demo_model_without_template_falls_back_to_builtin_gemma(gemma: Model) -> None:
    template = load_template(gemma)
    assert template.builtin_name == "gemma"
    prompt = template.render(CHAT)
    assert prompt.endswith("<start_of_turn>model\n")
    assert "Be brief." in prompt and "Hi" in prompt


def test_prompt_tokens_carry_exactly_one_bos(gemma: Model) -> None:
    bos = gemma.tokenize("", add_special=True)
    template = ChatTemplate(jinja_source="{{ bos_token }}{{ messages[0].content }}", bos_token=gemma.bos_text)
    tokens = gemma.tokenize_prompt(template.render([ChatMessage("user", "Hello")]))
    assert tokens[:1] == bos and tokens.count(bos[0]) == 1
    tokens = gemma.tokenize_prompt(load_template(gemma).render(CHAT))
    assert tokens.count(bos[0]) == 1
    # Special tokens are parsed: <start_of_turn> is one token, not its letters.
    assert gemma.tokenize("<start_of_turn>", add_special=False, parse_special=True) == tokens[1:2]


def test_no_think_appends_an_empty_think_block(gemma: Model) -> None:
    template = load_template(gemma)
    assert template.render(CHAT, no_think=True) == template.render(CHAT) + EMPTY_THINK_BLOCK
    assert "<think>" not in template.render(CHAT)


def test_no_think_respects_a_template_that_closes_the_block_itself() -> None:
    template = ChatTemplate(jinja_source=QWEN_LIKE)
    thinking_off = template.render(CHAT, no_think=True)
    assert thinking_off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert thinking_off.count("</think>") == 1
    assert "<think>" not in template.render(CHAT)


def prompt_text(engine: Engine, request: CompletionRequest) -> str:
    return b"".join(engine.model.piece(t) for t in engine.prompt_tokens(request)).decode()


def test_no_think_leaves_a_model_that_does_not_think_alone(engine: Engine) -> None:
    # The demo model knows nothing of <think>: the flag must not teach it the tags.
    assert not engine.thinks
    assert prompt_text(engine, ask("Hi", no_think=True)) == prompt_text(engine, ask("Hi"))


def test_no_think_reaches_the_prompt_of_a_thinking_template(model_path: str, tmp_path: Path) -> None:
    template = tmp_path / "thinking.jinja"
    template.write_text(
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"
        "{% if false %}<think>{% endif %}"
    )
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, n_slots=1, chat_template=str(template),
                                 no_think=True))
    try:
        assert engine.thinks
        assert prompt_text(engine, ask("Hi")).endswith("<|assistant|><think>\n\n</think>\n\n")
        assert prompt_text(engine, ask("Hi", no_think=False)).endswith("<|assistant|>")
    finally:
        engine.close()


@pytest.mark.parametrize(
    "hostile",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{% set x = messages.append(1) %}{{ x }}",
        "{{ cycler.__init__.__globals__.os.system('echo pwned') }}",
    ],
)
def test_sandbox_refuses_a_hostile_template(hostile: str) -> None:
    template = ChatTemplate(jinja_source=hostile)
    with pytest.raises(TemplateError) as caught:
        template.render(CHAT)
    assert "chat template failed" in str(caught.value)


def test_template_helpers_are_available() -> None:
    source = (
        "{{ bos_token }}{{ messages | tojson }}|{{ strftime_now('%Y') | length }}"
        "{% if messages | length > 5 %}{{ raise_exception('too many') }}{% endif %}"
    )
    template = ChatTemplate(jinja_source=source, bos_token="<s>")
    assert template.render(CHAT).startswith('<s>[{"role": "system", "content": "Be brief."}')
    with pytest.raises(TemplateError, match="too many"):
        template.render(CHAT * 3)


def test_override_by_builtin_name_or_file(gemma: Model, tmp_path) -> None:
    assert load_template(gemma, "chatml").render(CHAT).endswith("<|im_start|>assistant\n")
    file = tmp_path / "t.jinja"
    file.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}>")
    assert load_template(gemma, str(file)).render(CHAT) == "[system]Be brief.[user]Hi>"
    with pytest.raises(TemplateError, match="neither a built-in template nor a file"):
        load_template(gemma, "no-such-template")
    file.write_text("{% for m in messages %}")
    with pytest.raises(TemplateError, match="syntax error"):
        load_template(gemma, str(file))
