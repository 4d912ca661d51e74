"""igllama renders the instruct models' Jinja templates exactly as llama-server does.

tests/engine/data/template_parity.json holds the prompts llama-server
(`--jinja`, built from the same llama.cpp) gave for the conversations of
scripts/template_parity.py: plain turns, tools offered, calls and their
results in the history. Rendering does not depend on the CPU, so the
recorded text is the truth on every machine; `scripts/template_parity.py
--write` records it again, `--greedy` also compares replies live.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from igllama.engine.model import Model, ModelConfig
from tests.models import QWEN_CODER, SMOLLM2

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
from template_parity import CONVERSATIONS, RECORD, igllama_prompt

RECORDED = json.loads(RECORD.read_text())
MODELS = {"qwen2.5-coder-0.5b": QWEN_CODER, "smollm2-135m": SMOLLM2}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> Iterator[tuple[str, Model]]:
    loaded = Model(ModelConfig(str(MODELS[request.param].path())))
    yield request.param, loaded
    loaded.close()


def test_every_conversation_renders_as_llama_server_rendered_it(model: tuple[str, Model]) -> None:
    key, loaded = model
    recorded = RECORDED[key]
    assert recorded, f"nothing recorded for {key}"
    for name, prompt in recorded.items():
        body, _ = CONVERSATIONS[name]
        assert igllama_prompt(loaded, body) == prompt, f"{key}: {name}"


def test_the_record_covers_tools_on_the_template_that_has_them() -> None:
    assert {"tools_offered", "tool_result", "system_tools_two_calls"} <= set(RECORDED["qwen2.5-coder-0.5b"])
