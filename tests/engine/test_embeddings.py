"""Embeddings from the real model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from igllama.engine import EmbeddingInputError, Engine, TextDelta
from tests.engine.conftest import NEVER_STOP, ask


async def test_vectors_are_unit_length_and_meaningful(engine: Engine) -> None:
    result = await engine.embed(["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply."])
    a, b, c = result.vectors
    assert len(a) == engine.embedder.n_dims
    for v in result.vectors:
        assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-4)
    assert float(a @ b) > float(a @ c)
    assert result.prompt_tokens == sum(len(engine.model.tokenize(t, add_special=True)) for t in
                                       ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stock prices fell sharply."])


async def test_batched_inputs_equal_single_inputs_and_tokens_equal_text(engine: Engine) -> None:
    texts = [f"sentence number {i}" for i in range(11)]  # more than one batch of inputs
    together = (await engine.embed(texts)).vectors
    alone = (await engine.embed([texts[7]])).vectors[0]
    # Batching changes llama.cpp's kernel tiling, not the meaning: same vector to float noise.
    assert float(together[7] @ alone) > 0.999
    tokens = engine.model.tokenize(texts[7], add_special=True)
    np.testing.assert_allclose((await engine.embed([tokens])).vectors[0], alone, atol=1e-5)


async def test_bad_inputs_are_refused(engine: Engine) -> None:
    with pytest.raises(EmbeddingInputError, match=r"input\[1\] is empty"):
        await engine.embed(["ok", []])
    with pytest.raises(EmbeddingInputError, match="outside the vocabulary"):
        await engine.embed([[1, 2, 10**9]])
    with pytest.raises(EmbeddingInputError, match="more than the"):
        await engine.embed(["word " * 5000])


async def test_embeddings_interleave_with_generation(engine: Engine) -> None:
    async def chat() -> int:
        n = 0
        async for event in engine.generate(ask("Tell me a story.", max_tokens=30, sampling=NEVER_STOP)):
            n += isinstance(event, TextDelta)
        return n

    n_deltas, result = await asyncio.gather(chat(), engine.embed(["hello"] * 20))
    assert n_deltas > 0 and len(result.vectors) == 20
