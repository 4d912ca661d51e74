"""Embeddings from the real model."""

from __future__ import annotations

import asyncio
import resource

import numpy as np
import pytest

from igllama.engine import MAX_EMBEDDING_INPUTS, EmbeddingInputError, Engine, TextDelta
from igllama.engine.embeddings import CHUNK, Embedder, EmbeddingJob
from igllama.engine.model import Model
from igllama.engine.runner import ContextConfig, Runner
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
    with pytest.raises(EmbeddingInputError, match=f"input has {MAX_EMBEDDING_INPUTS + 1} items, more than the "
                                                  f"{MAX_EMBEDDING_INPUTS} one request may embed"):
        await engine.embed(["a"] * (MAX_EMBEDDING_INPUTS + 1))  # their vectors would all be held for the reply


async def test_embeddings_interleave_with_generation(engine: Engine) -> None:
    async def chat() -> int:
        n = 0
        async for event in engine.generate(ask("Tell me a story.", max_tokens=30, sampling=NEVER_STOP)):
            n += isinstance(event, TextDelta)
        return n

    n_deltas, result = await asyncio.gather(chat(), engine.embed(["hello"] * 20))
    assert n_deltas > 0 and len(result.vectors) == 20


async def test_a_cancelled_embedding_request_is_withdrawn(engine: Engine) -> None:
    # ~500,000 tokens: minutes of work on any CPU, unless withdrawn when its caller goes away.
    big = asyncio.ensure_future(engine.embed([[1000 + i % 7] * 250 for i in range(MAX_EMBEDDING_INPUTS)]))
    await asyncio.sleep(1.0)
    assert not big.done()
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    result = await asyncio.wait_for(engine.embed(["hello"]), 10)  # not queued behind its inputs
    assert len(result.vectors) == 1
    assert not engine.busy


def llama_cpp_mean(model: Model, tokens: list[int]) -> np.ndarray:
    """llama.cpp's own mean pooling of one input, decoded whole: the reference."""
    runner = Runner(model, ContextConfig(n_ctx=512, n_batch=512, n_threads=1, n_threads_batch=1, embeddings=True))
    try:
        runner.add_tokens(0, 0, tokens, logits_for_last=False)
        runner.mark_all_outputs(0, len(tokens))
        runner.decode()
        vector = np.ctypeslib.as_array(runner.sequence_embedding(0), shape=(model.n_embd,)).astype(np.float64)
    finally:
        runner.close()
    return vector / np.linalg.norm(vector)


def resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def test_inputs_longer_than_a_chunk_pool_as_llama_cpp_does(gemma: Model) -> None:
    # An input decoded in chunks of 64 tokens (this one spans three) and pooled
    # here gives the vector llama.cpp's own pooling gives it decoded whole; in
    # one job with others, several to a chunk, the same to float noise (llama.cpp
    # itself moves a vector by ~5e-3 between a batch of one sequence and of two).
    texts = ["A lighthouse keeper counts ships. " * n for n in (1, 9, 2, 25, 3)]
    tokens = [gemma.tokenize(text, add_special=True) for text in texts]
    assert max(map(len, tokens)) > 2 * CHUNK and min(map(len, tokens)) < CHUNK
    embedder = Embedder(gemma, 512, 1, 1)
    try:
        alone = [embed_job(embedder, [input_tokens])[0] for input_tokens in tokens]
        together = embed_job(embedder, tokens)
    finally:
        embedder.close()
    for vector, input_tokens in zip(alone, tokens, strict=True):
        np.testing.assert_allclose(vector, llama_cpp_mean(gemma, input_tokens), atol=1e-3)
    for batched, single in zip(together, alone, strict=True):
        assert float(batched @ single) > 0.999


def embed_job(embedder: Embedder, tokens: list[list[int]]) -> list[np.ndarray]:
    job = EmbeddingJob(tokens, sink=None)
    while not job.done:
        embedder.step(job)
    return job.vectors


def test_embedding_never_holds_logits_for_every_token(gemma: Model) -> None:
    # Gemma 3's vocabulary has 262,144 tokens: logits for every token of a
    # 2048-token batch are 2 GiB (a pooled llama.cpp context here grew by ~900
    # MiB). Chunked and stopped at the hidden states, the context stays small.
    embedder = Embedder(gemma, 2048, 1, 1)
    before = resident_mib()
    try:
        vectors = embed_job(embedder, [gemma.tokenize("word " * 2000, add_special=True)] * 2)
        grown = resident_mib() - before
    finally:
        embedder.close()
    assert len(vectors) == 2
    assert grown < 200, f"embedding 2 x 2000 tokens grew the process by {grown:.0f} MiB"
