"""A quantized KV cache (-ctk / -ctv, as llama-server): it serves, and bad names are refused."""

from __future__ import annotations

import pytest

from igllama import cli
from igllama.engine import Engine, EngineConfig, ModelConfig, ModelLoadError, runner
from tests.engine.conftest import NEVER_STOP, ask, run


async def test_a_q8_0_cache_generates_and_keeps_conversations(model_path: str) -> None:
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=1024, n_slots=2, cache_type_k="q8_0",
                                 cache_type_v="q8_0"))
    try:
        deltas, done = await run(engine, ask("Tell me about the sea.", 12, sampling=NEVER_STOP))
        assert (done.finish_reason, done.completion_tokens) == ("length", 12) and "".join(deltas)
        _, again = await run(engine, ask("Tell me about the sea.", 4, sampling=NEVER_STOP))
        assert again.cached_tokens == again.prompt_tokens - 1  # the prefix cache works on quantized cells
    finally:
        engine.close()


def test_an_unknown_type_is_a_load_error(model_path: str) -> None:
    with pytest.raises(ModelLoadError, match="unknown KV cache type 'q3'"):
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, n_slots=1, cache_type_k="q3"))


def test_the_flags_offer_exactly_the_types_the_runner_knows() -> None:
    assert cli.KV_CACHE_TYPES == tuple(runner.KV_CACHE_TYPES)
