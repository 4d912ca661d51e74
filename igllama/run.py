"""Run the product in the foreground: bind the port, load the model behind a
503, serve until a signal; `igllama api` and `igllama.serve` end here.

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

from igllama.config import ServerConfig, server_config
from igllama.engine import ModelLoadError, TemplateError, default_threads
from igllama.http import ListenError, TLSError, wait_for_signal
from igllama.library import Server
from igllama.version import __version__

log = logging.getLogger("igllama")


def run(config: ServerConfig) -> int:
    """Serve until SIGINT/SIGTERM; the process exit status."""
    return uvloop.run(_serve(config))


def serve(model: str | Path, **settings: Any) -> int:
    """Serve `model` until SIGINT/SIGTERM, as `igllama api` does; returns the exit status."""
    return run(server_config(model, **settings))


async def _serve(config: ServerConfig) -> int:
    running = Server(config)
    try:
        await running.bind()  # a bad certificate or key is refused here, before the model loads
    except (TLSError, ListenError, ModelLoadError) as exc:
        print(f"igllama: error: {exc}", file=sys.stderr)
        return 1
    stop = asyncio.ensure_future(wait_for_signal())
    # Let it install its SIGINT/SIGTERM handlers before the banner says we are
    # up: a Ctrl-C in between would otherwise end in a KeyboardInterrupt trace.
    await asyncio.sleep(0)
    _banner(config, running)
    if not running.pool.single:
        print(f"ready: {len(running.pool.models)} models, each loaded when a request names it: {running.url}/v1",
              file=sys.stderr)
        return await _serve_until_signal(config, running, stop)
    progress = _ProgressBar()
    started = time.perf_counter()
    load = asyncio.ensure_future(running.load(progress.update))
    await asyncio.wait([load, stop], return_when=asyncio.FIRST_COMPLETED)
    if stop.done():  # interrupted while loading: let the load finish, then free it
        running.app.drain()
        await asyncio.wait([load])
        await running.close()
        return 0
    try:
        load.result()
    except (ModelLoadError, TemplateError) as exc:
        progress.abandon()
        print(f"igllama: error: {exc}", file=sys.stderr)
        stop.cancel()
        return 1
    progress.finish()
    print(f"ready in {time.perf_counter() - started:.1f} s: {running.url}/v1", file=sys.stderr)
    return await _serve_until_signal(config, running, stop)


async def _serve_until_signal(config: ServerConfig, running: Server, stop: asyncio.Future[int]) -> int:
    signum = await stop
    log.info("received %s: draining; requests in flight have %g s to finish (a second signal stops at once)",
             signal.Signals(signum).name, config.shutdown_timeout)
    second_signal = asyncio.ensure_future(wait_for_signal())
    stopping = asyncio.ensure_future(running.stop(config.shutdown_timeout))
    await asyncio.wait({second_signal, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if second_signal.done():
        log.warning("second signal: stopping now")
        stopping.cancel()
        await running.close()
    else:
        second_signal.cancel()
    log.info("stopped")
    return 0


def _banner(config: ServerConfig, server: Server) -> None:
    threads = config.threads or default_threads()
    threads_batch = config.threads_batch or default_threads()
    lines = [
        f"igllama {__version__}: OpenAI-compatible API on {server.url}",
        f"  chat     {server.url}/ in a browser",
    ]
    if server.pool.single:
        lines += [
            f"  model    {config.model}" + (" (the bundled demo model)" if config.using_demo else ""),
            f"  id       {server.model_id}",
        ]
        if config.models_idle_unload:
            lines.append(f"  sleep    unloaded after {config.models_idle_unload:g} s idle; the next request "
                         "loads it again")
    else:
        names = list(server.pool.models)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        limits = [f"at most {config.models_max} loaded" if config.models_max else "",
                  f"unloaded after {config.models_idle_unload:g} s idle" if config.models_idle_unload else ""]
        lines += [
            f"  models   {shown}" + (f" (from {config.models_dir})" if config.models_dir else ""),
            "  loading  on demand" + "".join(f"; {limit}" for limit in limits if limit),
        ]
    lines += [
        f"  context  {config.ctx_size} tokens shared by {config.parallel} slots, batch {config.batch_size}",
        (
            f"  threads  {threads} generation, {threads_batch} prefill; gpu layers {config.gpu_layers}"
            f"{'; mlock' if config.mlock else ''}{'; no-think' if config.no_think else ''}"
        ),
    ]
    if config.ssl_cert_file:
        lines.append(f"  tls      certificate {config.ssl_cert_file}, key {config.ssl_key_file}")
    if config.api_key or config.api_keys:
        lines.append("  api key  required (Authorization: Bearer ...)")
    print("\n".join(lines), file=sys.stderr)


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
