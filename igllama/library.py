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

Settings are the fields of `igllama.cli.ServerConfig`, named as the command
line's long flags with underscores (`ctx_size`, `parallel`, `api_key`, ...).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from types import TracebackType
from typing import Any

from igllama.api import App, AppSettings, error_body
from igllama.cli import ServerConfig
from igllama.engine import Engine, EngineConfig, ModelConfig, ShuttingDown, default_threads
from igllama.engine.model import check_gguf_file
from igllama.engine.speculation import SpecConfig
from igllama.http import Limits, tls_context
from igllama.http import Server as HTTPServer

log = logging.getLogger("igllama")

# After the shutdown timeout, how long the error frames of ended requests may take to go out.
_LAST_FRAMES_SECONDS = 2.0


def server_config(model: str | Path, **settings: Any) -> ServerConfig:
    """A `ServerConfig` for `model`; an unknown setting is a TypeError naming it."""
    known = {f.name for f in fields(ServerConfig)} - {"model", "using_demo"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"unknown igllama setting(s) {', '.join(unknown)}; use: {', '.join(sorted(known))}")
    return ServerConfig(model=str(model), **settings)


def engine_config(config: ServerConfig) -> EngineConfig:
    """The engine's part of a server's settings."""
    return EngineConfig(
        model=ModelConfig(config.model, n_gpu_layers=config.gpu_layers, mlock=config.mlock, repack=config.repack),
        n_ctx=config.ctx_size,
        n_batch=config.batch_size,
        n_slots=config.parallel,
        n_threads=config.threads or default_threads(),
        n_threads_batch=config.threads_batch or default_threads(),
        chat_template=config.chat_template,
        no_think=config.no_think,
        cache_ram_mib=config.cache_ram,
        max_queue=config.max_queue,
        split_reasoning=config.reasoning_format != "none",
        cache_type_k=config.cache_type_k,
        cache_type_v=config.cache_type_v,
        spec=SpecConfig(config.spec, config.spec_draft_max, config.spec_ngram_min, config.spec_ngram_max),
    )


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
    answers 503 while the model loads.
    """

    def __init__(self, model: str | Path | ServerConfig, **settings: Any) -> None:
        config = model if isinstance(model, ServerConfig) else server_config(model, **settings)
        self.config = config
        self.model_id = config.alias or Path(config.model).name
        self.app = App(AppSettings(self.model_id, config.max_tokens, config.temp, config.api_key,
                                   config.responses_store, metrics=config.metrics, slots=config.slots,
                                   sse_ping=config.sse_ping))
        self.engine: Engine | None = None
        self._http: HTTPServer | None = None

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
        """Bind, load the model and serve; returns once the model is loaded."""
        await self.bind()
        await self.load()

    async def bind(self) -> HTTPServer:
        """Bind the port and answer (503 while loading) before the model is there."""
        config = self.config
        check_gguf_file(config.model)
        context: ssl.SSLContext | None = None
        if config.ssl_cert_file is not None and config.ssl_key_file is not None:
            context = tls_context(config.ssl_cert_file, config.ssl_key_file)
        self._http = await HTTPServer.start(self.app.router, config.host, config.port, limits=Limits(),
                                            error_body=error_body, ssl_context=context)
        return self._http

    async def load(self, progress: Callable[[float], None] | None = None) -> Engine:
        """Load the model on a worker thread (the event loop keeps serving), then serve it."""

        def on_progress(fraction: float) -> None:
            self.app.load_progress = fraction
            if progress is not None:
                progress(fraction)

        loop = asyncio.get_running_loop()
        try:
            self.engine = await loop.run_in_executor(None, Engine, engine_config(self.config), on_progress)
        except BaseException:
            await self.close()
            raise
        self.app.set_engine(self.engine)
        return self.engine

    async def stop(self, timeout: float | None = None) -> None:
        """Stop: new requests get 503, requests in flight have `timeout` seconds (default: the
        `shutdown_timeout` setting) to finish, then end with an error naming the shutdown."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.app.drain()
        http, engine = self._http, self.engine
        if http is not None and not await http.drain(timeout) and engine is not None:
            log.warning("shutdown timeout (%g s) reached: ending the requests still running", timeout)
            engine.abort(ShuttingDown(f"the server shut down before this request finished "
                                      f"(--shutdown-timeout {timeout:g} s)"))
            if not await http.drain(_LAST_FRAMES_SECONDS):
                log.warning("closing %d connection(s) that did not finish", http.connection_count)
        await self.close()

    async def close(self) -> None:
        """Stop at once: close every connection and free the model."""
        self.app.drain()
        http, engine = self._http, self.engine
        self._http = self.engine = None
        if http is not None:
            await http.close(0.0)
        if engine is not None:
            engine.close()

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


def serve(model: str | Path, **settings: Any) -> int:
    """Serve `model` until SIGINT/SIGTERM, as `igllama api` does; returns the exit status."""
    from igllama.serve import serve as serve_config

    return serve_config(server_config(model, **settings))
