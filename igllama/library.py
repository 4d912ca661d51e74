"""igllama inside a Python program: a server that starts and stops in a running
event loop, a blocking `serve`, and the engine on its own, without HTTP.

    import igllama

    igllama.serve("model.gguf", port=8080, parallel=2)     # blocks until SIGINT/SIGTERM

    async with igllama.Server("model.gguf", port=0) as server:
        ...                                                 # server.url: http://127.0.0.1:PORT

    engine = igllama.load("model.gguf", n_ctx=4096)
    async for delta in engine.chat([{"role": "user", "content": "Hi"}]):
        print(delta.text, end="")
    engine.close()

Settings are the fields of `igllama.config.ServerConfig`, named as the command
line's long flags with underscores (`ctx_size`, `parallel`, `api_key`, ...).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from igllama.api import AppSettings, create_app, error_body
from igllama.api.fields import Defaults
from igllama.catalog import CatalogModel, scan
from igllama.config import ServerConfig, server_config
from igllama.engine import Engine, EngineConfig, ModelConfig, ShuttingDown, default_threads
from igllama.engine.lora import LoraSpec
from igllama.engine.model import check_gguf_file
from igllama.engine.pool import EnginePool, ModelSpec
from igllama.engine.speculation import SpecConfig
from igllama.http import CorsPolicy, Limits, tls_context
from igllama.http import Server as HTTPServer

log = logging.getLogger("igllama")
T = TypeVar("T")

# After the shutdown timeout, how long the error frames of ended requests may take to go out.
_LAST_FRAMES_SECONDS = 2.0


def engine_config(config: ServerConfig, model: CatalogModel | None = None) -> EngineConfig:
    """The engine's part of a server's settings, for `model` (its models.toml settings
    over the server's) or the server's one model."""
    own = model if model is not None else CatalogModel(config.model, config.model)  # (no overrides)

    def pick(value: T | None, default: T) -> T:
        return default if value is None else value

    path = own.path
    ctx_size, parallel = pick(own.ctx_size, config.ctx_size), pick(own.parallel, config.parallel)
    template, no_think = pick(own.chat_template, config.chat_template), pick(own.no_think, config.no_think)
    return EngineConfig(
        model=ModelConfig(path, n_gpu_layers=config.gpu_layers, mlock=config.mlock, repack=config.repack),
        n_ctx=ctx_size,
        n_batch=config.batch_size,
        n_slots=parallel,
        n_threads=config.threads or default_threads(),
        n_threads_batch=config.threads_batch or default_threads(),
        chat_template=template,
        no_think=no_think,
        cache_ram_mib=config.cache_ram,
        max_queue=config.max_queue,
        split_reasoning=config.reasoning_format != "none",
        special_in_content=config.special_in_content,
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        spec=SpecConfig(config.spec, config.spec_draft_max, config.spec_ngram_min, config.spec_ngram_max,
                        config.spec_memory),
        n_ubatch=config.ubatch_size,
        flash_attn=config.flash_attn,
        pooling=config.pooling,
        # Adapters fit one architecture: they go with the model named first (llama-server has only that one).
        lora=tuple(LoraSpec(path, scale) for path, scale in config.lora) if path == config.model else (),
        lora_apply=not config.lora_init_without_apply,
    )


def request_defaults(config: ServerConfig) -> Defaults:
    """What a request that names no limit or sampling setting gets."""
    return Defaults(config.max_tokens, config.temp, config.top_k, config.top_p, config.min_p, config.seed,
                    config.repeat_penalty, config.presence_penalty, config.frequency_penalty)


def model_pool(config: ServerConfig) -> EnginePool:
    """The models `config` serves, none loaded yet (`igllama.catalog.CatalogError` for a bad catalog)."""
    specs = [ModelSpec(model.name, engine_config(config, model), model.aliases) for model in scan(config)]
    return EnginePool(specs, max_loaded=config.models_max, idle_unload=config.models_idle_unload)


def load(model: str | Path, **settings: Any) -> Engine:
    """Load `model` into an engine with the server's settings (`ctx_size`, `parallel`, `threads`, ...),
    for use without HTTP: `engine.chat(...)`, `await engine.embed([...])`; `engine.close()` frees it."""
    config = server_config(model, **settings)
    check_gguf_file(config.model)
    return Engine(engine_config(config))


class Server:
    """An igllama server inside a running event loop: `await start()`, `await stop()`, or `async with`.

    `start` binds the port (`port=0` picks a free one: see `port` and `url`),
    loads the model off the event loop and returns once requests are served;
    it raises `igllama.http.ListenError`, `igllama.http.TLSError` or
    `igllama.engine.ModelLoadError` with a one-line message. `/health`
    answers 503 while the model loads. With several models (`models_dir`,
    `models`) nothing is loaded at start: each loads when a request names it.
    """

    def __init__(self, model: str | Path | ServerConfig | None, **settings: Any) -> None:
        config = model if isinstance(model, ServerConfig) else server_config(model, **settings)
        self.config = config
        self.pool = model_pool(config)
        self.model_id = self.pool.default.name
        self.app = create_app(AppSettings(self.model_id, config.max_tokens, config.temp, config.api_key,
                                   config.responses_store, metrics=config.metrics, slots=config.slots,
                                   sse_ping=config.sse_ping, defaults=request_defaults(config),
                                   api_keys=config.api_keys, ui=config.ui, slot_save_path=config.slot_save_path))
        self._http: HTTPServer | None = None
        self._closed = False

    @property
    def engine(self) -> Engine | None:
        """The default model's engine, while it is loaded."""
        return self.pool.default.engine

    @property
    def port(self) -> int:
        """The bound port (once bound)."""
        return self._bound().port

    @property
    def url(self) -> str:
        """Where the server answers, e.g. `http://127.0.0.1:8080` (the OpenAI base URL adds `/v1`)."""
        server = self._bound()
        host = f"[{server.host}]" if ":" in server.host else server.host
        return f"{server.scheme}://{host}:{server.port}"

    async def start(self) -> None:
        """Bind, load the model and serve; returns once the model is loaded (with several, at once)."""
        await self.bind()
        await self.load()

    async def bind(self) -> HTTPServer:
        """Bind the port and answer (503 while loading) before the model is there."""
        config = self.config
        for path in (config.model, *config.models):
            if path:
                check_gguf_file(path)
        context: ssl.SSLContext | None = None
        if config.ssl_cert_file is not None and config.ssl_key_file is not None:
            context = tls_context(config.ssl_cert_file, config.ssl_key_file)
        cors = CorsPolicy.parse(config.cors_origins, config.cors_methods, config.cors_credentials)
        self._http = await HTTPServer.start(self.app.router, config.host, config.port, limits=Limits(),
                                            error_body=error_body, ssl_context=context, cors=cors)
        if not self.pool.single:
            self.app.set_pool(self.pool)  # models load on demand
        return self._http

    async def load(self, progress: Callable[[float], None] | None = None) -> Engine | None:
        """One model: load it on a worker thread (the event loop keeps serving), then serve it.
        Several: nothing to do, they load on demand (returns None)."""
        if not self.pool.single:
            return None

        def on_progress(name: str, fraction: float) -> None:
            self.app.load_progress = fraction
            if progress is not None:
                progress(fraction)

        self.pool.on_progress = on_progress
        try:
            engine = await self.pool.load()
        except BaseException:
            await self.close()
            raise
        self.app.set_pool(self.pool)
        return engine

    async def stop(self, timeout: float | None = None) -> None:
        """Stop: new requests get 503, requests in flight have `timeout` seconds (default: the
        `shutdown_timeout` setting) to finish, then end with an error naming the shutdown."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.app.drain()
        http = self._http
        if http is not None and not await http.drain(timeout):
            log.warning("shutdown timeout (%g s) reached: ending the requests still running", timeout)
            self.pool.abort(ShuttingDown(f"the server shut down before this request finished "
                                         f"(--shutdown-timeout {timeout:g} s)"))
            if not await http.drain(_LAST_FRAMES_SECONDS):
                log.warning("closing %d connection(s) that did not finish", http.connection_count)
        await self.close()

    async def close(self) -> None:
        """Stop at once: close every connection and free the models."""
        self.app.drain()
        http, self._http = self._http, None
        if http is not None:
            await http.close(0.0)
        if not self._closed:
            self._closed = True
            await self.pool.close()

    async def __aenter__(self) -> Server:  # noqa: PYI034 - typing.Self needs Python 3.11
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.stop()

    def _bound(self) -> HTTPServer:
        if self._http is None:
            raise RuntimeError("the server is not running: await start() first")
        return self._http
