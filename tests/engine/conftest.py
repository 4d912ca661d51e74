from __future__ import annotations

from collections.abc import Iterator

import pytest

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    Finished,
    ModelConfig,
    SamplingParams,
    TextDelta,
)
from igllama.engine.model import Model
from igllama.engine.speculation import SpecConfig

GREEDY = SamplingParams(temperature=0.0)
# Greedy with Gemma 3's end-of-generation tokens (<eos>, <end_of_turn>, </s>)
# banned: the reply runs to max_tokens, whatever text this machine's kernels
# produce (llama.cpp picks them by CPU, so greedy text differs between machines).
NEVER_STOP = SamplingParams(
    temperature=0.0, logit_bias=tuple((token, float("-inf")) for token in (1, 106, 212))
)


@pytest.fixture(scope="module")
def engine(model_path: str) -> Iterator[Engine]:
    # Drafts of at most 6 tokens: how much is drafted depends on decode timings (a busy
    # machine drafts differently), and only drafts that short keep a greedy reply exact
    # on two threads (see tests/engine/test_speculation.py and docs/speculation.md).
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=2048, n_batch=256, n_slots=4,
                                 spec=SpecConfig(draft_max=6)))
    yield engine
    engine.close()


def ask(text: str, max_tokens: int = 24, **kwargs: object) -> CompletionRequest:
    sampling = kwargs.pop("sampling", GREEDY)
    return CompletionRequest(
        (ChatMessage("user", text),), max_tokens=max_tokens, sampling=sampling, **kwargs  # type: ignore[arg-type]
    )


async def run(engine: Engine, request: CompletionRequest) -> tuple[list[str], Finished]:
    """The text deltas and the final event of one request."""
    deltas: list[str] = []
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            return deltas, event
    raise AssertionError("the stream ended without a Finished event")


@pytest.fixture(scope="module")
def gemma(model_path: str) -> Iterator[Model]:
    """The demo model alone (weights and vocabulary, no context)."""
    model = Model(ModelConfig(model_path))
    yield model
    model.close()
