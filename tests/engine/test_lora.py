"""LoRA adapters in the engine: scales change the logits, 0 is no adapter, keys never share a batch or a cache."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from igllama.engine import CompletionRequest, Engine, EngineConfig, ModelConfig, TextDelta
from igllama.engine.lora import LoraError, LoraSpec
from igllama.engine.model import ModelLoadError
from igllama.engine.speculation import SpecConfig
from tests.engine.conftest import GREEDY, NEVER_STOP, ask, run
from tests.lora_adapter import write_adapter


@pytest.fixture(scope="module")
def adapter(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_adapter(model_path, tmp_path_factory.mktemp("lora") / "adapter.gguf")


@pytest.fixture(scope="module")
def engine(model_path: str, adapter: Path) -> Iterator[Engine]:
    # Loaded without applying (--lora-init-without-apply): requests without `lora` run the bare model.
    # No speculation: a drafted token's logits come from a multi-token decode, which may differ
    # in the last bits from one token's, and these tests compare logprobs exactly.
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=1024, n_batch=256, n_slots=2, n_threads=1,
                                 n_threads_batch=1, lora=(LoraSpec(str(adapter)),), lora_apply=False,
                                 spec=SpecConfig(enabled=False)))
    yield engine
    engine.close()


async def logprobs(engine: Engine, lora: tuple[tuple[int, float], ...] | None, text: str = "Name a colour.",
                   cache_prompt: bool = False) -> tuple[list[int], list[float]]:
    request = ask(text, max_tokens=6, sampling=NEVER_STOP, logprobs=0, lora=lora, cache_prompt=cache_prompt)
    tokens: list[int] = []
    values: list[float] = []
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            tokens += [entry.token for entry in event.logprobs]
            values += [entry.logprob for entry in event.logprobs]
    return tokens, values


async def test_scale_zero_is_no_adapter_and_a_scale_changes_the_logits(engine: Engine) -> None:
    bare = await logprobs(engine, None)
    assert await logprobs(engine, ((0, 0.0),)) == bare  # exactly: a zero scale is not applied at all
    scaled = await logprobs(engine, ((0, 1.0),))
    assert scaled[1] != bare[1]
    assert await logprobs(engine, ((0, 1.0),)) == scaled  # the same scale again: the same reply


async def test_global_scales_apply_to_requests_without_lora(engine: Engine) -> None:
    bare = await logprobs(engine, None)
    scaled = await logprobs(engine, ((0, 1.0),))
    engine.adapters.set_scales(((0, 1.0),))
    try:
        assert await logprobs(engine, None) == scaled
        assert await logprobs(engine, ()) == scaled  # an empty list means the global scales (llama-server's)
        assert await logprobs(engine, ((0, 0.0),)) == bare
    finally:
        engine.adapters.set_scales(())
    assert engine.adapters.scales == (0.0,)


@pytest.mark.parametrize("loras", [(None, ((0, 1.0),)), (((0, 1.0),), ((0, 0.5),))])
async def test_requests_with_different_scales_run_together_each_as_alone(
        engine: Engine, loras: tuple[tuple[tuple[int, float], ...] | None, ...]) -> None:
    # They never share a decode (the scheduler takes turns between their keys), so each
    # gets exactly the logits it gets alone; sharing one would apply one request's scale to both.
    texts = ("Name a colour.", "Name a fruit.")
    alone = [await logprobs(engine, lora, text) for lora, text in zip(loras, texts)]
    together = await asyncio.gather(*(logprobs(engine, lora, text) for lora, text in zip(loras, texts)))
    assert list(together) == alone
    assert alone[0][1] != alone[1][1]


async def test_a_cached_prefix_is_not_reused_under_other_adapters(engine: Engine) -> None:
    text = "Tell me about the sea and the ships that sail it."
    _, first = await run(engine, ask(text, max_tokens=2, sampling=GREEDY))
    _, other = await run(engine, ask(text, max_tokens=2, sampling=GREEDY, lora=((0, 1.0),)))
    # The bare model's cells hold other values than the adapter's: not reused (at most the template's
    # opening, from earlier requests with this adapter).
    assert other.cached_tokens < first.prompt_tokens - 1
    _, again = await run(engine, ask(text, max_tokens=2, sampling=GREEDY, lora=((0, 1.0),)))
    assert again.cached_tokens == first.prompt_tokens - 1


@pytest.mark.parametrize("lora", [((1, 1.0),), ((-1, 1.0),), ((0, float("nan")),), ((0, 1000.0),)])
async def test_a_bad_adapter_id_or_scale_is_refused_before_any_work(engine: Engine,
                                                                    lora: tuple[tuple[int, float], ...]) -> None:
    with pytest.raises(LoraError) as refused:
        await engine.submit(CompletionRequest(ask("hi").messages, lora=lora))
    assert refused.value.param == "lora"


def test_an_adapter_for_another_model_or_no_file_is_a_load_error(model_path: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, lora=(LoraSpec(str(tmp_path / "none.gguf")),)))
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="LoRA adapter"):
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, lora=(LoraSpec(str(broken)),)))


async def test_different_scales_take_turns_and_equal_scales_share_decodes(engine: Engine) -> None:
    async def decodes(loras: tuple[tuple[tuple[int, float], ...] | None, ...]) -> int:
        before = engine.steps
        await asyncio.gather(*(logprobs(engine, lora, text) for lora, text in zip(loras, ("A fox.", "A bear."))))
        return engine.steps - before

    # Six tokens each: together one prefill step and five decodes; apart twice that.
    assert await decodes((((0, 1.0),), ((0, 1.0),))) <= 7
    assert await decodes((None, ((0, 1.0),))) >= 12
    assert await decodes((((0, 0.5),), ((0, 1.0),))) >= 12
