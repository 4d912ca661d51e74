"""`EnginePool`'s decisions with fake engines (the real ones: tests/api/test_models.py).

Which model is unloaded to make room, that a busy model is waited for rather
than unloaded, that loads of one model are shared, that a failed load is
remembered until its file changes, and that an unknown name lists the others.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from igllama.engine import EngineConfig, ModelConfig, ModelLoadError, ModelLoadFailed, ModelNotFound
from igllama.engine.pool import EnginePool, ModelSpec, ModelState


class FakeEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.busy = False
        self.idle_since = time.monotonic()
        self.closed = False

    def close(self, reason: Exception | None = None) -> None:
        time.sleep(0.02)  # (freeing takes a while: requests arrive meanwhile)
        self.closed = True

    def abort(self, error: Exception) -> None:
        pass


class Factory:
    """Makes fake engines, counting loads; a path in `broken` fails to load."""

    def __init__(self, delay: float = 0.0) -> None:
        self.loads: list[str] = []
        self.engines: list[FakeEngine] = []
        self.broken: set[str] = set()
        self.delay = delay

    def __call__(self, config: EngineConfig, progress: Any, thread: Any) -> FakeEngine:
        time.sleep(self.delay)
        path = config.model.path
        self.loads.append(path)
        if path in self.broken:
            raise ModelLoadError(f"{path}: not a model llama.cpp can load")
        self.engines.append(FakeEngine(config))
        return self.engines[-1]


def pool_of(tmp_path: Path, names: list[str], factory: Factory, **limits: Any) -> EnginePool:
    specs = []
    for name in names:
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF")
        specs.append(ModelSpec(name, EngineConfig(ModelConfig(str(path))), aliases=(f"{name}.gguf",)))
    return EnginePool(specs, factory=factory, **limits)  # type: ignore[arg-type]


def test_names_aliases_latest_and_the_default(tmp_path: Path) -> None:
    pool = pool_of(tmp_path, ["a", "b"], Factory())
    assert pool.find("b").name == "b"
    assert pool.find("b.gguf").name == "b"
    assert pool.find("b:latest").name == "b"
    assert pool.find(None).name == pool.find("default").name == pool.find("").name == "a"
    with pytest.raises(ModelNotFound, match="'c' is not served here; the models are: a, b"):
        pool.find("c")
    single = pool_of(tmp_path, ["only"], Factory())
    assert single.find("anything at all").name == "only"  # one model: as llama-server, any name


def test_the_least_recently_used_idle_model_makes_room(tmp_path: Path) -> None:
    async def run() -> None:
        factory = Factory()
        pool = pool_of(tmp_path, ["a", "b", "c"], factory, max_loaded=2)
        a = await pool.engine("a")
        await pool.engine("b")
        await pool.engine("a")  # a is now the more recent
        await pool.engine("c")
        assert {m.name for m in pool.loaded()} == {"a", "c"}
        assert pool.models["b"].state is ModelState.UNLOADED
        assert not a.closed
        await pool.close()

    asyncio.run(run())


def test_a_busy_model_is_waited_for_not_unloaded(tmp_path: Path) -> None:
    async def run() -> None:
        pool = pool_of(tmp_path, ["a", "b"], Factory(), max_loaded=1)
        a = await pool.engine("a")
        a.busy = True  # a request is running on it
        loading_b = asyncio.ensure_future(pool.engine("b"))
        await asyncio.sleep(0.3)
        assert not loading_b.done() and not a.closed
        a.busy = False
        b = await asyncio.wait_for(loading_b, 5)
        assert a.closed and not b.closed
        await pool.close()

    asyncio.run(run())


def test_requests_for_a_loading_model_share_its_load(tmp_path: Path) -> None:
    async def run() -> None:
        factory = Factory(delay=0.2)
        pool = pool_of(tmp_path, ["a", "b"], factory)
        engines = await asyncio.gather(*(pool.engine("a") for _ in range(5)))
        assert len({id(engine) for engine in engines}) == 1
        assert len(factory.loads) == 1
        await pool.close()

    asyncio.run(run())


def test_a_failed_load_is_remembered_until_the_file_changes(tmp_path: Path) -> None:
    async def run() -> None:
        factory = Factory()
        pool = pool_of(tmp_path, ["a", "bad"], factory)
        bad_path = str(tmp_path / "bad.gguf")
        factory.broken.add(bad_path)
        for _ in range(2):
            with pytest.raises(ModelLoadFailed, match="'bad' failed to load: .*not a model"):
                await pool.engine("bad")
        assert factory.loads.count(bad_path) == 1
        assert pool.models["bad"].state is ModelState.FAILED
        assert await pool.engine("a")  # the others serve
        factory.broken.clear()
        os.utime(bad_path, ns=(0, 12345))  # the file changed: the next request tries again
        assert await pool.engine("bad")
        await pool.close()

    asyncio.run(run())


def test_load_raises_what_loading_raised(tmp_path: Path) -> None:
    async def run() -> None:
        factory = Factory()
        pool = pool_of(tmp_path, ["only"], factory)
        factory.broken.add(str(tmp_path / "only.gguf"))
        with pytest.raises(ModelLoadError):
            await pool.load()
        await pool.close()

    asyncio.run(run())


def test_idle_models_are_unloaded_after_idle_unload_seconds(tmp_path: Path) -> None:
    async def run() -> None:
        pool = pool_of(tmp_path, ["a", "b"], Factory(), idle_unload=0.2)
        a = await pool.engine("a")
        b = await pool.engine("b")
        b.busy = True
        await asyncio.sleep(0.8)
        assert a.closed and pool.models["a"].state is ModelState.UNLOADED
        assert not b.closed  # in use: kept
        await pool.close()
        assert b.closed

    asyncio.run(run())


def test_room_for_one_never_holds_two_while_requests_alternate(tmp_path: Path) -> None:
    async def run() -> None:
        factory = Factory(delay=0.02)
        pool = pool_of(tmp_path, ["a", "b"], factory, max_loaded=1)
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sum(not engine.closed for engine in factory.engines))
                await asyncio.sleep(0.001)

        watcher = asyncio.ensure_future(watch())
        engines = await asyncio.gather(*(pool.engine(name) for name in "abababab"))
        watcher.cancel()
        assert peak == 1
        assert all(engine is not None for engine in engines)
        await pool.close()

    asyncio.run(run())
