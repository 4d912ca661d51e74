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
import numpy as np


def write_adapter(model_path: str | Path, target: Path, *, layers: tuple[int, ...] = (0, 1),
                  rank: int = 4, magnitude: float = 0.5, seed: int = 7) -> Path:
    """Write an adapter for `model_path` to `target` and return it.

    llama.cpp checks each pair against its base weight (ggml shape [n_in, n_out]):
    lora_a is [n_in, rank] and lora_b [rank, n_out]; numpy shapes are the reverse.
    """
    reader = gguf.GGUFReader(str(model_path))
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    shapes = {tensor.name: [int(n) for n in tensor.shape] for tensor in reader.tensors}
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(target), architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))  # alpha / rank = 1: the scale is the multiplier
    for layer in layers:
        name = f"blk.{layer}.attn_q.weight"
        n_in, n_out = shapes[name]
        lora_a = (rng.standard_normal((rank, n_in)) * magnitude).astype(np.float32)
        lora_b = (rng.standard_normal((n_out, rank)) * magnitude).astype(np.float32)
        writer.add_tensor(f"{name}.lora_a", lora_a)
        writer.add_tensor(f"{name}.lora_b", lora_b)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
