"""Pooled, L2-normalised embeddings.

Embeddings use a context of their own, created on first use so a server that
never embeds never pays for it. The engine thread runs one embedding decode
between two chat steps, so an embedding request never stalls generation for
longer than that.

A generative model (causal attention: what a token sees never depends on the
tokens after it) is embedded in chunks of `CHUNK` tokens with llama.cpp's
pooling off. Each input keeps its own sequence in the context's KV cache, so
an input may span chunks, and igllama pools the hidden states itself (their
mean, or the first or last token's). Each decode stops at the hidden states:
the vocabulary projection, most of a small model's work (Gemma 3 270M:
262,144 x 640 weights against ~100 M in its layers), is never computed, and
no logits are kept for every token. What llama.cpp still reserves, an
output row of logits per token of a chunk, is what keeps the chunk short.

A bidirectional model (BERT-like) must see an input whole: such inputs go one
batch at a time, and llama.cpp pools them with the model's own pooling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.errors import InputError
from igllama.engine.model import Model
from igllama.engine.runner import ContextConfig, Runner

MAX_INPUTS_PER_BATCH = 8  # sequences in one decode
# Inputs in one request (OpenAI's limit): their vectors are all held until the reply goes out.
MAX_INPUTS = 2048
CHUNK = 64  # tokens per decode of a generative model (each reserves an output row of logits)

# How a generative model's hidden states become one vector (--pooling, by
# llama-server's names), else by the GGUF's pooling type, else their mean.
MEAN, FIRST, LAST = "mean", "cls", "last"
POOLING_BY_GGUF = {1: MEAN, 2: FIRST, 3: LAST}


class EmbeddingInputError(InputError):
    """An input cannot be embedded (too long, empty, or not in the vocabulary)."""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[np.ndarray]  # float32, unit length, one per input
    prompt_tokens: int


class EmbeddingJob:
    """One embeddings request on the engine thread."""

    __slots__ = ("inputs", "next_input", "offset", "pooled", "sink", "vectors")

    def __init__(self, inputs: list[list[int]], sink: Any) -> None:
        self.inputs = inputs
        self.vectors: list[np.ndarray] = []
        self.next_input = 0
        self.offset = 0  # tokens of inputs[next_input] already decoded (a chunked input)
        self.pooled: np.ndarray | None = None  # their running sum, or the first token's state
        self.sink = sink

    @property
    def done(self) -> bool:
        return self.next_input >= len(self.inputs)

    @property
    def started(self) -> bool:
        return self.next_input > 0 or self.offset > 0

    def finish_input(self, vector: np.ndarray) -> None:
        norm = float(np.linalg.norm(vector))
        self.vectors.append((vector / norm if norm > 0.0 else vector).astype(np.float32))
        self.next_input += 1
        self.offset = 0
        self.pooled = None

    def result(self) -> EmbeddingResult:
        return EmbeddingResult(self.vectors, sum(len(tokens) for tokens in self.inputs))


class Embedder:
    def __init__(self, model: Model, n_batch: int, n_threads: int, n_threads_batch: int,
                 pooling: str | None = None, flash_attn: str = "auto") -> None:
        self.model = model
        self.n_batch = n_batch  # the longest input, in tokens
        n_out = llama.llama_model_n_embd_out(model.pointer)
        self.n_dims = n_out if n_out > 0 else model.n_embd
        causal = model.metadata(f"{model.architecture}.attention.causal") not in ("false", "0")
        gguf_pooling = POOLING_BY_GGUF.get(int(model.metadata(f"{model.architecture}.pooling_type") or 1))
        # Pooled here (a causal model), or by llama.cpp (None).
        self.pooling: str | None = (pooling or gguf_pooling) if causal else None
        chunked = self.pooling is not None
        self._config = ContextConfig(
            n_ctx=n_batch + CHUNK if chunked else n_batch,  # (the longest input, and the next chunk beside it)
            n_batch=CHUNK if chunked else n_batch,
            n_seq_max=MAX_INPUTS_PER_BATCH,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch,
            embeddings=True,
            flash_attn=flash_attn,
            pooling="none" if chunked else pooling,
            hidden_states_only=chunked,
        )
        self._runner: Runner | None = None

    def tokenize(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Tokens for each input, checked against the vocabulary and the longest input."""
        if len(inputs) > MAX_INPUTS:
            raise EmbeddingInputError(f"input has {len(inputs)} items, more than the {MAX_INPUTS} one request "
                                      "may embed")
        result = []
        longest = self.n_batch * self.model.max_token_bytes  # (more characters make more tokens than allowed)
        for i, item in enumerate(inputs):
            if len(item) > longest:
                raise EmbeddingInputError(
                    f"input[{i}] has {len(item)} {'characters' if isinstance(item, str) else 'tokens'}, more "
                    f"than the {self.n_batch} tokens an input may have could hold")
            tokens = self.model.tokenize(item, add_special=True) if isinstance(item, str) else list(item)
            if not tokens:
                raise EmbeddingInputError(f"input[{i}] is empty")
            for token in tokens:
                if not 0 <= token < self.model.n_vocab:
                    raise EmbeddingInputError(
                        f"input[{i}] holds token id {token}, outside the vocabulary (0..{self.model.n_vocab - 1})"
                    )
            if len(tokens) > self.n_batch:
                raise EmbeddingInputError(
                    f"input[{i}] has {len(tokens)} tokens, more than the {self.n_batch} an input may have "
                    "(the batch size, --batch-size)"
                )
            result.append(tokens)
        return result

    def step(self, job: EmbeddingJob) -> None:
        """One decode's worth of `job`: the next chunk of its inputs."""
        runner = self._runner or self._start()
        if not job.started:
            runner.clear_memory()  # (a job cancelled half-way may have left its sequences)
        try:
            if self.pooling is None:
                self._whole_inputs(runner, job)
            else:
                self._chunk(runner, job, self.pooling)
        except BaseException:
            runner.clear_memory()
            raise

    def _chunk(self, runner: Runner, job: EmbeddingJob, pooling: str) -> None:
        """Up to CHUNK tokens of the next inputs, pooled here from their hidden states."""
        runner.clear_batch()
        spans: list[tuple[int, int, int]] = []  # (sequence, first batch index, tokens), one per input
        index, offset = job.next_input, job.offset
        while index < len(job.inputs) and runner.batch_size < CHUNK and len(spans) < MAX_INPUTS_PER_BATCH:
            tokens = job.inputs[index][offset : offset + CHUNK - runner.batch_size]
            start = runner.batch_size
            seq_id = index % MAX_INPUTS_PER_BATCH  # (consecutive inputs: distinct within a chunk)
            runner.add_tokens(seq_id, offset, tokens, logits_for_last=pooling == LAST)
            if pooling == MEAN:
                runner.mark_all_outputs(start, runner.batch_size)
            elif pooling == FIRST and offset == 0:
                runner.mark_all_outputs(start, start + 1)
            spans.append((seq_id, start, len(tokens)))
            offset += len(tokens)
            if offset == len(job.inputs[index]):
                index, offset = index + 1, 0
        runner.decode()
        for seq_id, start, n_tokens in spans:
            tokens = job.inputs[job.next_input]
            if pooling == MEAN:
                rows = np.stack([self._state(runner, i) for i in range(start, start + n_tokens)])
                total = rows.sum(axis=0, dtype=np.float64)
                job.pooled = total if job.pooled is None else job.pooled + total
            elif pooling == FIRST and job.offset == 0:
                job.pooled = self._state(runner, start).astype(np.float64)
            job.offset += n_tokens
            if job.offset < len(tokens):
                continue  # the input goes on in the next chunk
            if pooling == LAST:
                job.pooled = self._state(runner, start + n_tokens - 1).astype(np.float64)
            assert job.pooled is not None
            job.finish_input(job.pooled / len(tokens) if pooling == MEAN else job.pooled)
            runner.remove(seq_id, 0)

    def _whole_inputs(self, runner: Runner, job: EmbeddingJob) -> None:
        """The next inputs that fit together in one batch, pooled by llama.cpp."""
        runner.clear_batch()
        first = job.next_input
        end = first
        while (
            end < len(job.inputs)
            and end - first < MAX_INPUTS_PER_BATCH
            and runner.batch_size + len(job.inputs[end]) <= self.n_batch
        ):
            # Every token is an output: pooling reads them all.
            start = runner.batch_size
            runner.add_tokens(end - first, 0, job.inputs[end], logits_for_last=False)
            runner.mark_all_outputs(start, runner.batch_size)
            end += 1
        runner.decode()
        for seq_id in range(end - first):
            pointer = runner.sequence_embedding(seq_id)
            if pointer is None:
                raise RuntimeError("llama.cpp returned no pooled embedding")
            job.finish_input(np.ctypeslib.as_array(pointer, shape=(self.n_dims,)).astype(np.float64))
        runner.clear_memory()

    def _state(self, runner: Runner, i: int) -> np.ndarray:
        pointer = runner.token_embedding(i)
        if pointer is None:
            raise RuntimeError(f"llama.cpp returned no hidden state for batch position {i}")
        return np.ctypeslib.as_array(pointer, shape=(self.n_dims,))

    def _start(self) -> Runner:
        self._runner = Runner(self.model, self._config)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
