"""Run the product: bind the port, load the model behind a 503, serve until a signal.

The port is bound before the model loads so that orchestrators can poll
`/health` (503 while loading, 200 when ready) instead of guessing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import uvloop

from igllama import __version__
from igllama.api import App, AppSettings, error_body
from igllama.cli import ServerConfig
from igllama.engine import (
    Engine,
    EngineConfig,
    ModelConfig,
    ModelLoadError,
    ShuttingDown,
    TemplateError,
    default_threads,
)
from igllama.engine.speculation import SpecConfig
from igllama.http import Limits, ListenError, Server, TLSError, tls_context, wait_for_signal

log = logging.getLogger("igllama")

# After the shutdown timeout, how long the error frames of ended requests may take to go out.
_LAST_FRAMES_SECONDS = 2.0


def engine_config(config: ServerConfig) -> EngineConfig:
    return EngineConfig(
        model=ModelConfig(config.model, n_gpu_layers=config.gpu_layers, mlock=config.mlock),
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


def serve(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; the process exit status."""
    return uvloop.run(_serve(config))


async def _serve(config: ServerConfig) -> int:
    model_id = config.alias or Path(config.model).name
    app = App(AppSettings(model_id, config.max_tokens, config.temp, config.api_key, config.responses_store,
                          metrics=config.metrics, slots=config.slots, sse_ping=config.sse_ping))
    try:
        # A bad certificate or key is refused here, before the model loads.
        ssl_context = None
        if config.ssl_cert_file is not None and config.ssl_key_file is not None:
            ssl_context = tls_context(config.ssl_cert_file, config.ssl_key_file)
        server = await Server.start(app.router, config.host, config.port, limits=Limits(), error_body=error_body,
                                    ssl_context=ssl_context)
    except (TLSError, ListenError) as exc:
        print(f"igllama: error: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.ensure_future(wait_for_signal())
    # Let it install its SIGINT/SIGTERM handlers before the banner says we are
    # up: a Ctrl-C in between would otherwise end in a KeyboardInterrupt trace.
    await asyncio.sleep(0)
    _banner(config, server, model_id)
    progress = _ProgressBar()

    def on_progress(fraction: float) -> None:
        app.load_progress = fraction
        progress.update(fraction)

    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    load = loop.run_in_executor(None, Engine, engine_config(config), on_progress)
    pending: list[asyncio.Future[Any]] = [load, stop]
    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if stop.done():  # interrupted while loading: let the load finish, then free it
        app.drain()
        await server.close(0.0)
        engine = await _loaded_or_none(load)
        if engine is not None:
            engine.close()
        return 0
    try:
        engine = load.result()
    except (ModelLoadError, TemplateError) as exc:
        progress.abandon()
        print(f"igllama: error: {exc}", file=sys.stderr)
        stop.cancel()
        await server.close(0.0)
        return 1
    progress.finish()
    app.set_engine(engine)
    print(f"ready in {time.perf_counter() - started:.1f} s: {_base_url(server)}/v1", file=sys.stderr)
    signum = await stop
    log.info("received %s: draining; requests in flight have %g s to finish (a second signal stops at once)",
             signal.Signals(signum).name, config.shutdown_timeout)
    app.drain()
    second_signal = asyncio.ensure_future(wait_for_signal())
    draining = asyncio.ensure_future(_drain(server, engine, config.shutdown_timeout))
    await asyncio.wait({second_signal, draining}, return_when=asyncio.FIRST_COMPLETED)
    if second_signal.done():
        log.warning("second signal: stopping now")
        draining.cancel()
    else:
        second_signal.cancel()
    await server.close(0.0)
    engine.close()
    log.info("stopped")
    return 0


async def _drain(server: Server, engine: Engine, timeout: float) -> None:
    """Let requests in flight finish for `timeout` seconds, then end the rest
    with an error that names the shutdown (a stream still gets `[DONE]`)."""
    if await server.drain(timeout):
        return
    log.warning("shutdown timeout (%g s) reached: ending the requests still running", timeout)
    engine.abort(ShuttingDown(f"the server shut down before this request finished (--shutdown-timeout {timeout:g} s)"))
    if not await server.drain(_LAST_FRAMES_SECONDS):
        log.warning("closing %d connection(s) that did not finish", server.connection_count)


async def _loaded_or_none(load: asyncio.Future[Engine]) -> Engine | None:
    try:
        return await load
    except Exception:  # noqa: BLE001 - we are shutting down anyway: a failed load has nothing to free
        return None


def _banner(config: ServerConfig, server: Server, model_id: str) -> None:
    threads = config.threads or default_threads()
    threads_batch = config.threads_batch or default_threads()
    lines = [
        f"igllama {__version__}: OpenAI-compatible API on {_base_url(server)}",
        f"  model    {config.model}" + (" (the bundled demo model)" if config.using_demo else ""),
        f"  id       {model_id}",
        f"  context  {config.ctx_size} tokens shared by {config.parallel} slots, batch {config.batch_size}",
        (
            f"  threads  {threads} generation, {threads_batch} prefill; gpu layers {config.gpu_layers}"
            f"{'; mlock' if config.mlock else ''}{'; no-think' if config.no_think else ''}"
        ),
    ]
    if config.ssl_cert_file:
        lines.append(f"  tls      certificate {config.ssl_cert_file}, key {config.ssl_key_file}")
    if config.api_key:
        lines.append("  api key  required (Authorization: Bearer ...)")
    print("\n".join(lines), file=sys.stderr)


def _base_url(server: Server) -> str:
    """`https://host:port` when serving TLS, `http://host:port` otherwise."""
    return f"{server.scheme}://{_url_host(server.host)}:{server.port}"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class _ProgressBar:
    """A load progress bar on a terminal; two plain lines otherwise."""

    WIDTH = 30

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = -1
        if not self.tty:
            print("loading model ...", file=sys.stderr)

    def update(self, fraction: float) -> None:
        percent = int(fraction * 100)
        if not self.tty or percent == self.shown:
            return
        self.shown = percent
        filled = int(fraction * self.WIDTH)
        sys.stderr.write(f"\rloading model [{'#' * filled}{'.' * (self.WIDTH - filled)}] {percent:3d}%")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            self.update(1.0)
            sys.stderr.write("\n")

    def abandon(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
