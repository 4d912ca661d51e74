"""Several models behind one server: loaded on demand, unloaded when idle or to make room.

A request names its model; `EnginePool.engine(name)` returns that model's
engine, loading it first when it is not loaded (the caller waits; loads of
the same model are shared). `max_loaded` keeps at most that many models
loaded, unloading the least recently used one that nobody is using;
`idle_unload` unloads a model unused for that many seconds. A model that
fails to load fails its requests with `ModelLoadFailed` until its file
changes; the others keep serving.

Every engine of the pool runs on the pool's one `EngineThread`, so two
models never compute at once on the same cores (see `engine.thread`).
Loading itself (reading weights, allocating the context) runs on an executor
thread while the engine thread keeps serving the other models.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from igllama.engine.engine import Engine, EngineConfig
from igllama.engine.errors import EngineError, EngineUnavailable, ModelLoadFailed, ModelNotFound
from igllama.engine.thread import EngineThread

log = logging.getLogger("igllama.engine")

# Names that mean "the server's default model" (the first), as the specification's examples send.
DEFAULT_NAMES = ("", "default")
# How often a load waiting for room, and the idle reaper, look again (seconds).
_POLL_SECONDS = 0.05


class ModelState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model the pool offers: the name requests use, other names for it, how to load it."""

    name: str
    config: EngineConfig
    aliases: tuple[str, ...] = ()


EngineFactory = Callable[[EngineConfig, Callable[[float], None], EngineThread], Engine]


class PooledModel:
    """One offered model and its state (read by the API for listings and health)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.state = ModelState.UNLOADED
        self.engine: Engine | None = None
        self.error: str | None = None  # why the last load failed
        self.failure: Exception | None = None  # what it raised
        self.progress = 0.0  # of the load under way
        self.last_used = 0.0  # monotonic time the model was last handed out
        self.loaded_at = 0.0  # wall-clock time of the last load
        self.waiting = 0  # requests waiting for its load
        self.holds_memory = False  # loading (past waiting for room), loaded, or unloading
        self._task: asyncio.Task[None] | None = None  # the load or unload under way
        self._failed_file: tuple[int, int] | None = None  # (mtime, size) of the file that failed

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_use(self) -> bool:
        return self.waiting > 0 or (self.engine is not None and self.engine.busy)

    @property
    def idle_since(self) -> float:
        """When it was last used (monotonic); now while it is in use."""
        if self.in_use:
            return time.monotonic()
        return max(self.last_used, self.engine.idle_since if self.engine is not None else 0.0)


class EnginePool:
    """The models a server offers, by name; engines made by `factory` on one shared engine thread."""

    def __init__(self, specs: Sequence[ModelSpec], *, max_loaded: int = 0, idle_unload: float = 0.0,
                 factory: EngineFactory | None = None) -> None:
        if not specs:
            raise ValueError("a pool needs at least one model")
        self.models = {spec.name: PooledModel(spec) for spec in specs}
        self._names = {name: model for model in self.models.values()
                       for name in (model.name, *model.spec.aliases)}
        self.default = self.models[specs[0].name]
        self.max_loaded = max_loaded
        self.idle_unload = idle_unload
        self._factory = factory or (lambda config, progress, thread: Engine(config, progress, thread))
        self._thread: EngineThread | None = None  # started with the first load
        self._reaper: asyncio.Task[None] | None = None
        # Told of every load's progress (model name, fraction), on the loading thread.
        self.on_progress: Callable[[str, float], None] | None = None
        self._closed = False

    @classmethod
    def of(cls, name: str, engine: Engine) -> EnginePool:
        """A pool of one engine already loaded (by its own thread)."""
        pool = cls([ModelSpec(name, engine.config)])
        model = pool.default
        model.engine, model.state, model.holds_memory = engine, ModelState.LOADED, True
        model.last_used, model.loaded_at = time.monotonic(), time.time()
        return pool

    @property
    def single(self) -> bool:
        """One model: every request goes to it, whatever model it names (as llama-server)."""
        return len(self.models) == 1

    def find(self, requested: str | None) -> PooledModel:
        """The model a request's `model` field picks; `ModelNotFound` lists the names otherwise.
        Ollama's `name:latest` is the same as `name`."""
        if self.single or requested is None or requested in DEFAULT_NAMES:
            return self.default
        model = self._names.get(requested) or self._names.get(requested.removesuffix(":latest"))
        if model is None:
            raise ModelNotFound(requested, list(self.models))
        return model

    def loaded(self) -> list[PooledModel]:
        return [model for model in self.models.values() if model.state is ModelState.LOADED]

    async def engine(self, requested: str | None) -> Engine:
        """The engine of the requested model, loading it first if need be.

        Returns without a suspension point once the model is loaded, so that
        a caller that submits right away holds the engine before any unload
        can look at it."""
        model = self.find(requested)
        self._start_reaper()
        while True:
            if model.state is ModelState.LOADED and model.engine is not None:
                model.last_used = time.monotonic()
                return model.engine
            if self._closed:
                raise EngineUnavailable("the server is shutting down")
            if model.state is ModelState.FAILED:
                if _file_stamp(model.spec.config.model.path) == model._failed_file:
                    raise ModelLoadFailed(f"model {model.name!r} failed to load: {model.error}") from model.failure
                model.state = ModelState.UNLOADED  # the file changed: try again
            if model._task is None:
                model.state, model.progress, model.error = ModelState.LOADING, 0.0, None
                model._task = asyncio.get_running_loop().create_task(self._load(model))
            model.waiting += 1
            try:
                await asyncio.shield(model._task)
            finally:
                model.waiting -= 1

    async def load(self, requested: str | None = None) -> Engine:
        """Load a model now (the default one unless named); a failure raises what loading
        raised (`ModelLoadError`, `TemplateError`, ...), not `ModelLoadFailed`."""
        try:
            return await self.engine(requested)
        except ModelLoadFailed as exc:
            if isinstance(exc.__cause__, Exception):
                raise exc.__cause__ from None
            raise

    async def _load(self, model: PooledModel) -> None:
        try:
            await self._make_room(model)
            model.holds_memory = True
            log.info("loading model %s from %s", model.name, model.spec.config.model.path)
            started = time.perf_counter()

            def progress(fraction: float) -> None:  # (on the loading thread)
                model.progress = fraction
                if self.on_progress is not None:
                    self.on_progress(model.name, fraction)

            loop = asyncio.get_running_loop()
            try:
                if self._thread is None:
                    self._thread = EngineThread()
                engine = await loop.run_in_executor(None, self._factory, model.spec.config, progress, self._thread)
            except Exception as exc:  # noqa: BLE001 - any failure to load is this model's, reported per request
                model.state, model.error, model.failure = ModelState.FAILED, str(exc), exc
                model.holds_memory = False
                model._failed_file = _file_stamp(model.spec.config.model.path)
                log.error("model %s failed to load: %s", model.name, exc)
                return
            model.engine, model.state = engine, ModelState.LOADED
            model.last_used, model.loaded_at = time.monotonic(), time.time()
            log.info("model %s loaded in %.1f s", model.name, time.perf_counter() - started)
        finally:
            model._task = None

    async def _make_room(self, model: PooledModel) -> None:
        """With `max_loaded`, unload least recently used idle models until `model` fits,
        waiting for one to finish its requests when all are busy."""
        if self.max_loaded <= 0:
            return
        while True:
            others = [m for m in self.models.values() if m is not model and m.holds_memory]
            if len(others) < self.max_loaded:
                return
            idle = [m for m in others if m.state is ModelState.LOADED and not m.in_use]
            if idle:
                victim = min(idle, key=lambda m: m.idle_since)
                log.info("unloading model %s (least recently used) to load %s", victim.name, model.name)
                await self._unload(victim)
            else:
                await asyncio.sleep(_POLL_SECONDS)

    async def unload(self, requested: str) -> bool:
        """Unload a model now if it is loaded and unused (Ollama's `keep_alive: 0`); whether it was."""
        model = self.find(requested)
        if model.state is not ModelState.LOADED or model.in_use:
            return False
        await self._unload(model)
        return True

    async def _unload(self, model: PooledModel, reason: EngineError | None = None) -> None:
        """Unload a loaded model; a request for it meanwhile waits, then loads it again."""
        if model._task is None and model.engine is not None:
            model.state = ModelState.UNLOADING
            model._task = asyncio.get_running_loop().create_task(self._close(model, model.engine, reason))
        if model._task is not None:
            await asyncio.shield(model._task)

    async def _close(self, model: PooledModel, engine: Engine, reason: EngineError | None) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, engine.close, reason or EngineUnavailable(f"model {model.name!r} was unloaded"))
        finally:
            model.engine, model.state, model.holds_memory = None, ModelState.UNLOADED, False
            model._task = None

    def _start_reaper(self) -> None:
        if self.idle_unload > 0 and self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unload models idle for `idle_unload` seconds."""
        interval = min(1.0, self.idle_unload / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for model in self.loaded():
                if not model.in_use and now - model.idle_since >= self.idle_unload:
                    log.info("unloading model %s: idle for %.0f s", model.name, now - model.idle_since)
                    try:
                        await self._unload(model)
                    except Exception:  # (logged; the reaper goes on with the other models)
                        log.exception("unloading model %s failed", model.name)

    def abort(self, error: EngineError) -> None:
        """End every request in flight, on every model (the end of a shutdown's drain)."""
        for model in self.loaded():
            if model.engine is not None:
                model.engine.abort(error)

    async def close(self) -> None:
        """Unload every model (requests still in flight fail) and stop the engine thread."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for model in self.models.values():
            if model._task is not None:  # a load under way: let it end, then unload it
                with contextlib.suppress(Exception):
                    await asyncio.shield(model._task)
        for model in self.models.values():
            if model.engine is not None:
                await self._unload(model, EngineUnavailable("the server stopped"))
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.stop)


def _file_stamp(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
