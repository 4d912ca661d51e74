"""A small LoRA adapter for a test model, written with the `gguf` package.

No adapter for the test models is published on PyPI, so the tests make one:
low-rank A and B matrices for the attention query projection of the first
layers, in llama.cpp's adapter layout (`general.type = adapter`,
`adapter.type = lora`, tensors `<weight>.lora_a` / `.lora_b`). Its values are
random but seeded and large enough that a scale visibly moves the logits.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.model import Model, ModelConfig


def write_adapter(model_path: str | Path, target: Path, *, layers: tuple[int, ...] = (0, 1),
                  rank: int = 4, magnitude: float = 0.5, seed: int = 7) -> Path:
    """Write an adapter for `model_path` to `target` and return it.

    llama.cpp checks each pair against its base weight (ggml shape [n_in, n_out]):
    lora_a is [n_in, rank] and lora_b [rank, n_out]; numpy shapes are the reverse.
    """
    architecture, n_in, n_out = _query_shape(str(model_path))
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(target), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))  # alpha / rank = 1: the scale is the multiplier
    for layer in layers:
        name = f"blk.{layer}.attn_q.weight"
        lora_a = (rng.standard_normal((rank, n_in)) * magnitude).astype(np.float32)
        lora_b = (rng.standard_normal((n_out, rank)) * magnitude).astype(np.float32)
        writer.add_tensor(f"{name}.lora_a", lora_a)
        writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def _query_shape(model_path: str) -> tuple[str, int, int]:
    """The architecture and the query projection's (n_in, n_out), from the model's metadata
    (gguf's reader would parse the whole 262k-token vocabulary first: half a minute)."""
    model = Model(ModelConfig(model_path))
    try:
        n_embd, n_head = model.n_embd, llama.llama_model_n_head(model.pointer)
        head_dim = model.metadata(f"{model.architecture}.attention.key_length")
        return model.architecture, n_embd, n_head * (int(head_dim) if head_dim else n_embd // n_head)
    finally:
        model.close()
