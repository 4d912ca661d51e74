"""Loading: parameters that really reach llama.cpp, and one-line errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import llama_cpp.llama_cpp as llama
import pytest

from igllama.engine import Engine, EngineConfig, ModelConfig, ModelLoadError
from igllama.engine.model import Model, model_params
from tests.engine.conftest import NEVER_STOP, ask, run


def test_load_parameters_reach_real_fields() -> None:
    fields = {name for name, _ in llama.llama_model_params._fields_}
    # A ctypes Structure ignores unknown attributes silently: check the names exist.
    assert {"n_gpu_layers", "load_mode", "progress_callback", "use_extra_bufts"} <= fields
    params = model_params(ModelConfig("m.gguf", n_gpu_layers=35, mlock=True))
    assert params.n_gpu_layers == 35
    assert params.load_mode == llama.LLAMA_LOAD_MODE_MMAP_MLOCK
    assert model_params(ModelConfig("m.gguf")).load_mode == llama.LLAMA_LOAD_MODE_MMAP
    assert model_params(ModelConfig("m.gguf")).n_gpu_layers == 0
    assert model_params(ModelConfig("m.gguf", n_gpu_layers=-1)).n_gpu_layers == -1


def test_mlock_pins_the_weights(model_path: str) -> None:
    before = _locked_kib()
    model = Model(ModelConfig(model_path, mlock=True))
    try:
        assert _locked_kib() - before > 100_000  # most of the 253 MB file is pinned
    finally:
        model.close()


def test_progress_is_reported_up_to_one(model_path: str) -> None:
    seen: list[float] = []
    Model(ModelConfig(model_path), progress=seen.append).close()
    assert seen and seen[-1] == pytest.approx(1.0)
    assert seen == sorted(seen)


def test_all_gpu_layers_is_accepted_on_a_cpu_build(model_path: str) -> None:
    engine = Engine(EngineConfig(ModelConfig(model_path, n_gpu_layers=-1), n_ctx=256, n_slots=1))
    try:
        _, done = asyncio.run(run(engine, ask("Hi", max_tokens=2, sampling=NEVER_STOP)))
        assert done.completion_tokens == 2
    finally:
        engine.close()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match=f"model file not found: {path}$"):
        Model(ModelConfig(str(path)))


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some text")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        Model(ModelConfig(str(path)))


def test_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a file"):
        Model(ModelConfig(str(tmp_path)))


def test_a_truncated_gguf_llama_cpp_cannot_load(model_path: str, tmp_path: Path) -> None:
    path = tmp_path / "truncated.gguf"
    with open(model_path, "rb") as f:
        path.write_bytes(f.read(1_000_000))
    with pytest.raises(ModelLoadError) as caught:
        Model(ModelConfig(str(path)))
    message = str(caught.value)
    assert message.startswith(f"llama.cpp could not load {path}: ") and "\n" not in message


def test_a_context_that_cannot_be_created(model_path: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=16_000_000, n_slots=1))
    message = str(caught.value)
    assert "could not create a context of 16000000 tokens" in message and "\n" not in message
    with pytest.raises(ModelLoadError, match="context size must be between 1 and"):
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=2_000_000_000, n_slots=1))


def _locked_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    pytest.skip("no VmLck in /proc/self/status")
