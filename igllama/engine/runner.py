"""The llama_context: creating it, filling batches, decoding them.

Only the engine thread touches a `Runner` after it is built: llama.cpp
contexts are not thread-safe, and ctypes releases the GIL during
`llama_decode`, so the event loop keeps serving while a batch runs.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama
from llama_cpp._ggml import libggml

from igllama.engine import logs
from igllama.engine.model import Model, ModelLoadError


def default_threads() -> int:
    """All the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True)
class ContextConfig:
    n_ctx: int = 4096
    n_batch: int = 512
    n_seq_max: int = 1
    n_threads: int = 0  # 0: all cores
    n_threads_batch: int = 0
    embeddings: bool = False
    # With embeddings: whether to stop each decode at the hidden states, never
    # computing the vocabulary projection.
    hidden_states_only: bool = False
    cache_type_k: str = "f16"  # the KV cache's element types (KV_CACHE_TYPES)
    cache_type_v: str = "f16"
    n_ubatch: int = 0  # tokens per physical decode (llama-server's -ub); 0: n_batch
    flash_attn: str = "auto"  # FLASH_ATTN's keys
    pooling: str | None = None  # embeddings only: POOLING's keys; None: the model's, else mean


# The KV cache types llama-server offers, by their names there.
KV_CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7}

@llama.ggml_backend_sched_eval_callback
def _stop_at_hidden_states(tensor: int, ask: bool, _user_data: int) -> bool:
    """llama.cpp's graph callback: asked which nodes we want to see, name the
    final hidden states; once they are computed, answer False, which ends the
    decode there, before the vocabulary projection (on a 262,144-token
    vocabulary, most of a small model's work). The node's name is llama.cpp's
    (`result_norm`, renamed `result_embd_pooled` once pooling is built); a
    graph without it is computed whole, as without this callback."""
    if ask:
        return bool(libggml.ggml_get_name(tensor) in HIDDEN_STATE_NAMES)
    return False


HIDDEN_STATE_NAMES = (b"result_norm", b"result_embd_pooled")
libggml.ggml_get_name.restype = ctypes.c_char_p
libggml.ggml_get_name.argtypes = [ctypes.c_void_p]

FLASH_ATTN = {"auto": llama.LLAMA_FLASH_ATTN_TYPE_AUTO, "on": llama.LLAMA_FLASH_ATTN_TYPE_ENABLED,
              "off": llama.LLAMA_FLASH_ATTN_TYPE_DISABLED}
# llama.cpp's poolings by llama-server's names ("none": a vector per token,
# which only the embedder asks for, to pool a generative model's itself).
POOLING = {"mean": llama.LLAMA_POOLING_TYPE_MEAN, "cls": llama.LLAMA_POOLING_TYPE_CLS,
           "last": llama.LLAMA_POOLING_TYPE_LAST, "none": llama.LLAMA_POOLING_TYPE_NONE}

# llama.cpp overflows 32-bit sizes (and aborts) on absurd contexts; refuse them first.
MAX_CTX = 1 << 24


class DecodeError(Exception):
    """llama_decode failed; `code` is its return value."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Runner:
    """A llama_context with one reusable batch of `n_batch` tokens."""

    def __init__(self, model: Model, config: ContextConfig) -> None:
        if not 1 <= config.n_ctx <= MAX_CTX:
            raise ModelLoadError(f"context size must be between 1 and {MAX_CTX} tokens, not {config.n_ctx}")
        if config.n_batch < 1:
            raise ModelLoadError(f"batch size must be at least 1, not {config.n_batch}")
        params = llama.llama_context_default_params()
        params.n_ctx = config.n_ctx
        params.n_batch = min(config.n_batch, config.n_ctx)
        params.n_ubatch = min(config.n_ubatch, params.n_batch) if config.n_ubatch > 0 else params.n_batch
        params.n_seq_max = config.n_seq_max
        # A speculating sequence wants logits at every drafted position of a batch
        # (this llama.cpp otherwise allows one output per sequence).
        params.n_outputs_max_per_seq = 0
        params.n_threads = config.n_threads or default_threads()
        params.n_threads_batch = config.n_threads_batch or default_threads()
        params.kv_unified = True  # one pool: a lone long conversation may use all of it
        # Keep the whole sliding-window cache (llama.cpp's own default here):
        # otherwise a sliding-window model (Gemma 3) drops old positions and a
        # conversation's next turn cannot reuse its prefix past the window.
        params.swa_full = True
        for name in (config.cache_type_k, config.cache_type_v):
            if name not in KV_CACHE_TYPES:
                raise ModelLoadError(f"unknown KV cache type {name!r}; use one of {', '.join(KV_CACHE_TYPES)}")
        params.type_k, params.type_v = KV_CACHE_TYPES[config.cache_type_k], KV_CACHE_TYPES[config.cache_type_v]
        if config.flash_attn not in FLASH_ATTN:
            raise ModelLoadError(f"flash attention is on, off or auto, not {config.flash_attn!r}")
        params.flash_attn_type = FLASH_ATTN[config.flash_attn]
        if config.cache_type_v not in ("f16", "f32", "bf16"):
            if config.flash_attn == "off":
                raise ModelLoadError(f"a quantized V cache ({config.cache_type_v}) needs flash attention: "
                                     "drop --flash-attn off, or use --cache-type-v f16")
            params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_ENABLED  # llama.cpp needs it for a quantized V
        params.no_perf = True
        if config.embeddings:
            params.embeddings = True
            if config.pooling is not None:
                if config.pooling not in POOLING:
                    raise ModelLoadError(f"pooling is one of {', '.join(POOLING)}, not {config.pooling!r}")
                params.pooling_type = POOLING[config.pooling]
            elif model.metadata(f"{model.architecture}.pooling_type") is None:
                params.pooling_type = llama.LLAMA_POOLING_TYPE_MEAN  # generative models: mean
            if config.hidden_states_only:
                params.cb_eval = _stop_at_hidden_states
        logs.forget_last_error()
        self._ctx = llama.llama_init_from_model(model.pointer, params)
        if not self._ctx:
            reason = logs.last_error() or "unknown error"
            raise ModelLoadError(
                f"llama.cpp could not create a context of {config.n_ctx} tokens for {model.path}: {reason}"
            )
        self.model = model
        self.n_ctx: int = llama.llama_n_ctx(self._ctx)
        self.n_batch: int = llama.llama_n_batch(self._ctx)
        self.n_seq_max: int = llama.llama_n_seq_max(self._ctx)
        self._memory = llama.llama_get_memory(self._ctx)
        self._batch = llama.llama_batch_init(self.n_batch, 0, 1)
        self.batch_size = 0

    @property
    def ctx(self) -> llama.llama_context_p:
        return self._ctx

    def close(self) -> None:
        if getattr(self, "_ctx", None):
            llama.llama_batch_free(self._batch)
            llama.llama_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        self.close()

    # -- batches

    def clear_batch(self) -> None:
        self.batch_size = 0

    def add_tokens(self, seq_id: int, first_pos: int, tokens: Iterable[int], logits_for_last: bool) -> int:
        """Append tokens at consecutive positions; returns the batch index of the last one."""
        batch = self._batch
        token, pos, n_seq_id, seq_ids, logits = batch.token, batch.pos, batch.n_seq_id, batch.seq_id, batch.logits
        i = self.batch_size
        p = first_pos
        for t in tokens:
            token[i] = t
            pos[i] = p
            n_seq_id[i] = 1
            seq_ids[i][0] = seq_id
            logits[i] = 0
            i += 1
            p += 1
        if logits_for_last:
            logits[i - 1] = 1
        self.batch_size = i
        return i - 1

    def mark_all_outputs(self, start: int, stop: int) -> None:
        logits = self._batch.logits
        for i in range(start, stop):
            logits[i] = 1

    def decode(self) -> None:
        """Run the batch. Raises DecodeError; code 1 means the KV pool had no room."""
        self._batch.n_tokens = self.batch_size
        code = llama.llama_decode(self._ctx, self._batch)
        if code != 0:
            reason = {1: "no room in the KV cache", 2: "aborted", -1: "invalid batch"}.get(code, "fatal error")
            raise DecodeError(code, f"llama_decode failed ({code}: {reason})")

    # -- KV memory

    def remove(self, seq_id: int, from_pos: int) -> bool:
        """Drop a sequence's KV cells from position `from_pos` on (0: all of them)."""
        return bool(llama.llama_memory_seq_rm(self._memory, seq_id, from_pos, -1))

    def min_position(self, seq_id: int) -> int:
        return int(llama.llama_memory_seq_pos_min(self._memory, seq_id))

    def copy(self, source: int, target: int, n: int) -> None:
        """Give `target` the cells of `source`'s positions below `n` (shared in the unified pool, not duplicated)."""
        llama.llama_memory_seq_cp(self._memory, source, target, 0, n)

    def save(self, seq_id: int) -> Any:
        """A copy of a sequence's KV state (a ctypes byte array), or None."""
        size = llama.llama_state_seq_get_size(self._ctx, seq_id)
        state = (ctypes.c_uint8 * size)()
        written = llama.llama_state_seq_get_data(self._ctx, state, size, seq_id)
        return state if written == size else None

    def restore(self, seq_id: int, state: Any) -> bool:
        """Load a state from `save` into `seq_id` (which must be empty)."""
        return bool(llama.llama_state_seq_set_data(self._ctx, state, len(state), seq_id))

    def clear_memory(self) -> None:
        llama.llama_memory_clear(self._memory, True)

    # -- embeddings

    def sequence_embedding(self, seq_id: int) -> Any:
        """The pooled embedding of a sequence (a float pointer), or None."""
        ptr = llama.llama_get_embeddings_seq(self._ctx, seq_id)
        return ptr if ptr else None

    def token_embedding(self, i: int) -> Any:
        """The hidden state at batch position `i` (an output; a float pointer), or None."""
        ptr = llama.llama_get_embeddings_ith(self._ctx, i)
        return ptr if ptr else None
