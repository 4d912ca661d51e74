"""Pooled, L2-normalised embeddings, several inputs per decode.

Embeddings use a context of their own (pooling on, no KV reuse), created on
first use so a server that never embeds never pays for it. The engine thread
runs at most one embedding batch between two chat steps, so an embedding
request never stalls generation for longer than one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.errors import InputError
from igllama.engine.model import Model
from igllama.engine.runner import ContextConfig, Runner

MAX_INPUTS_PER_BATCH = 8


class EmbeddingInputError(InputError):
    """An input cannot be embedded (too long, empty, or not in the vocabulary)."""


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    vectors: list[np.ndarray]  # float32, unit length, one per input
    prompt_tokens: int


class EmbeddingJob:
    """One embeddings request on the engine thread."""

    __slots__ = ("inputs", "next_input", "sink", "vectors")

    def __init__(self, inputs: list[list[int]], sink: Any) -> None:
        self.inputs = inputs
        self.vectors: list[np.ndarray] = []
        self.next_input = 0
        self.sink = sink

    @property
    def done(self) -> bool:
        return self.next_input >= len(self.inputs)

    def result(self) -> EmbeddingResult:
        return EmbeddingResult(self.vectors, sum(len(tokens) for tokens in self.inputs))


class Embedder:
    def __init__(self, model: Model, n_batch: int, n_threads: int, n_threads_batch: int,
                 pooling: str | None = None, flash_attn: str = "auto") -> None:
        self.model = model
        self.n_batch = n_batch
        self._config = ContextConfig(
            n_ctx=n_batch,
            n_batch=n_batch,
            n_seq_max=MAX_INPUTS_PER_BATCH,
            n_threads=n_threads,
            n_threads_batch=n_threads_batch,
            embeddings=True,
            flash_attn=flash_attn,
            pooling=pooling,
        )
        self._runner: Runner | None = None
        n_out = llama.llama_model_n_embd_out(model.pointer)
        self.n_dims = n_out if n_out > 0 else model.n_embd

    def tokenize(self, inputs: list[str | list[int]]) -> list[list[int]]:
        """Tokens for each input, checked against the vocabulary and the batch size."""
        result = []
        longest = self.n_batch * self.model.max_token_bytes  # (more characters make more tokens than a batch)
        for i, item in enumerate(inputs):
            if len(item) > longest:
                raise EmbeddingInputError(
                    f"input[{i}] has {len(item)} {'characters' if isinstance(item, str) else 'tokens'}, more "
                    f"than the {self.n_batch} tokens that fit in one batch could hold")
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
                    f"input[{i}] has {len(tokens)} tokens, more than the {self.n_batch} that fit in one batch"
                )
            result.append(tokens)
        return result

    def step(self, job: EmbeddingJob) -> None:
        """Embed the next inputs of `job` that fit together in one batch."""
        runner = self._runner or self._start()
        runner.clear_batch()
        first = job.next_input
        n_tokens = 0
        while (
            job.next_input < len(job.inputs)
            and job.next_input - first < MAX_INPUTS_PER_BATCH
            and n_tokens + len(job.inputs[job.next_input]) <= self.n_batch
        ):
            tokens = job.inputs[job.next_input]
            seq_id = job.next_input - first
            # Every token is an output: pooling reads them all.
            runner.add_tokens(seq_id, 0, tokens, logits_for_last=False)
            runner.mark_all_outputs(runner.batch_size - len(tokens), runner.batch_size)
            n_tokens += len(tokens)
            job.next_input += 1
        try:
            runner.decode()
            for seq_id in range(job.next_input - first):
                pointer = runner.sequence_embedding(seq_id)
                if pointer is None:
                    raise RuntimeError("llama.cpp returned no pooled embedding")
                vector = np.ctypeslib.as_array(pointer, shape=(self.n_dims,)).astype(np.float32)
                norm = float(np.linalg.norm(vector))
                job.vectors.append(vector / norm if norm > 0.0 else vector)
        finally:
            runner.clear_memory()

    def _start(self) -> Runner:
        self._runner = Runner(self.model, self._config)
        return self._runner

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
