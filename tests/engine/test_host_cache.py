"""Conversations parked in host RAM come back, longer than Gemma 3's 512-token window too."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    ModelConfig,
    SamplingParams,
)
from tests.engine.conftest import GREEDY, run

# Greedy, and the reply cannot end early (Gemma 3's end-of-generation tokens banned).
FULL_LENGTH = SamplingParams(temperature=0.0, logit_bias=tuple((t, float("-inf")) for t in (1, 106, 212)))


@pytest.fixture(scope="module")
def engine(model_path: str) -> Iterator[Engine]:
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=4096, n_batch=512, n_slots=2, cache_ram_mib=256))
    yield engine
    engine.close()


def conversation(*turns: str) -> tuple[ChatMessage, ...]:
    roles = ("user", "assistant")
    return tuple(ChatMessage(roles[i % 2], text) for i, text in enumerate(turns))


def request(messages: tuple[ChatMessage, ...], max_tokens: int = 6) -> CompletionRequest:
    return CompletionRequest(messages, max_tokens=max_tokens, sampling=FULL_LENGTH)


async def park_everything(engine: Engine) -> None:
    """Admitting a request moves every idle slot's state to host RAM (a slot that only
    shares the template's first tokens with it is saved there before it is reused)."""
    _, done = await run(engine, CompletionRequest(conversation("Unrelated: what is two plus two?"), max_tokens=1,
                                                  sampling=GREEDY))
    assert engine.scheduler.cells_used <= done.prompt_tokens + 1  # nothing else stayed in the KV pool


@pytest.mark.parametrize("n_words", [60, 200])  # about 200 and 700 prompt tokens: inside and past the window
async def test_a_parked_prompt_sent_again_comes_back_from_host_ram(engine: Engine, n_words: int) -> None:
    first = conversation(f"Remember these {n_words} words: " + " ".join(f"item{i}" for i in range(n_words)))
    _, cold = await run(engine, request(first))
    if n_words == 200:
        assert cold.prompt_tokens > engine.model.n_swa  # the case the window used to break
    await park_everything(engine)

    _, again = await run(engine, request(first))
    assert again.prompt_tokens == cold.prompt_tokens
    assert again.cached_tokens == cold.prompt_tokens - 1  # only the last prompt token is decoded again


async def test_a_long_conversation_continues_from_host_ram(engine: Engine) -> None:
    first = conversation("Here is a list: " + " ".join(f"entry{i}" for i in range(180)) + ". Summarise it.")
    deltas, turn1 = await run(engine, request(first, max_tokens=12))
    assert turn1.prompt_tokens > engine.model.n_swa
    await park_everything(engine)

    second = (*first, ChatMessage("assistant", "".join(deltas)), ChatMessage("user", "And the last entry?"))
    text, turn2 = await run(engine, request(second, max_tokens=8))
    # The whole first turn (prompt and reply) comes back; only the new message is prefilled.
    assert turn2.cached_tokens >= turn1.prompt_tokens
    assert turn2.completion_tokens == 8 and "".join(text)
