"""A slot's KV cache saved to a file and restored, in this engine or a new one (a restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from igllama.engine import Engine, EngineConfig, ModelConfig
from igllama.engine.slot_files import SlotBusy, SlotFileError
from igllama.engine.speculation import SpecConfig
from tests.engine.conftest import ask, run

SYSTEM = "You are a ship's log. " + " ".join(f"Entry {i}: calm sea, wind from the west." for i in range(12))


def new_engine(model_path: str) -> Engine:
    return Engine(EngineConfig(ModelConfig(model_path), n_ctx=1024, n_batch=256, n_slots=1, n_threads=1,
                               n_threads_batch=1, spec=SpecConfig(enabled=False)))


async def test_a_saved_slot_restores_after_a_restart_with_the_same_reply(model_path: str, tmp_path: Path) -> None:
    path = str(tmp_path / "log.bin")
    engine = new_engine(model_path)
    try:
        text, cold = await run(engine, ask(SYSTEM, max_tokens=8))
        saved = await engine.slot_file("save", 0, path)
        assert saved.n_tokens == cold.prompt_tokens + cold.completion_tokens - 1  # (the last token is not decoded)
        assert saved.n_bytes == Path(path).stat().st_size
    finally:
        engine.close()
    engine = new_engine(model_path)  # a new server: nothing cached
    try:
        restored = await engine.slot_file("restore", 0, path)
        assert restored.n_tokens == saved.n_tokens
        again_text, again = await run(engine, ask(SYSTEM, max_tokens=8))
        assert again.cached_tokens == cold.prompt_tokens - 1
        assert "".join(again_text) == "".join(text)
        erased = await engine.slot_file("erase", 0)
        assert erased.n_tokens == again.prompt_tokens + again.completion_tokens - 1
        _, cold_again = await run(engine, ask(SYSTEM, max_tokens=1))
        assert cold_again.cached_tokens == 0
    finally:
        engine.close()


async def test_bad_slots_and_files_are_refused(model_path: str, tmp_path: Path) -> None:
    engine = new_engine(model_path)
    try:
        with pytest.raises(SlotFileError, match="no slot 3"):
            await engine.slot_file("save", 3, str(tmp_path / "x.bin"))
        with pytest.raises(SlotFileError, match="no slot file"):
            await engine.slot_file("restore", 0, str(tmp_path / "missing.bin"))
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"not a state" * 10)
        with pytest.raises(SlotFileError, match="could not restore"):
            await engine.slot_file("restore", 0, str(junk))
        _, done = await run(engine, ask("Still serving?", max_tokens=2))  # the engine carries on
        assert done.completion_tokens == 2
    finally:
        engine.close()


async def test_a_busy_slot_is_refused(model_path: str, tmp_path: Path) -> None:
    engine = new_engine(model_path)
    try:
        stream = await engine.submit(ask("Count to fifty.", max_tokens=64))
        await stream.__anext__()  # generating now: the one slot is busy
        with pytest.raises(SlotBusy, match="slot 0 is serving"):
            await engine.slot_file("save", 0, str(tmp_path / "busy.bin"))
        await stream.aclose()
    finally:
        engine.close()
