"""igllama as a library, through its public API only: `igllama.Server`, `igllama.load`, `igllama.serve`."""

from __future__ import annotations

import asyncio
import gc
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
import uvloop

import igllama
from tests.api.conftest import NEVER_STOP, REPO, TIMEOUT, wait_until

SMALL = {"ctx_size": 1024, "parallel": 1, "threads": 1, "threads_batch": 1, "temp": 0.0, "cache_ram": 0}


def chat_over_http(url: str) -> dict[str, object]:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "logit_bias": NEVER_STOP}
    response = requests.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def engine_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("igllama")]


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def test_a_server_starts_and_stops_twice_in_one_process(model_path: str) -> None:
    async def cycle() -> None:
        async with igllama.Server(model_path, port=0, **SMALL) as server:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
            health = await asyncio.to_thread(requests.get, f"{server.url}/health", timeout=TIMEOUT)
            assert health.json()["status"] == "ok"
            reply = await asyncio.to_thread(chat_over_http, server.url)
            assert reply["usage"]["completion_tokens"] == 4  # type: ignore[index]
            url = server.url
        with pytest.raises(requests.ConnectionError):
            await asyncio.to_thread(requests.get, f"{url}/health", timeout=TIMEOUT)

    before = len(engine_threads())
    uvloop.run(cycle())
    gc.collect()
    after_first = rss_mib()
    uvloop.run(cycle())
    gc.collect()
    assert len(engine_threads()) == before, engine_threads()  # the engine and watchdog threads ended
    assert rss_mib() - after_first < 64, "a second start/stop cycle kept memory"


def test_the_engine_without_http(model_path: str) -> None:
    async def use() -> None:
        engine = igllama.load(model_path, **SMALL)
        try:
            stream = engine.chat([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0.0,
                                 logit_bias=tuple((int(k), v) for k, v in NEVER_STOP.items()))
            pieces = [delta.text async for delta in stream]
            assert "".join(pieces) and stream.finished is not None
            assert stream.finished.completion_tokens == 6
            # Greedy, read afresh: the same reply. (From the prefix cache the last prompt token is
            # decoded alone, and on some CPUs that moves a near tie: docs/how-it-works.md, Determinism.)
            again = await engine.chat([{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0.0,
                                      logit_bias=tuple((int(k), v) for k, v in NEVER_STOP.items()),
                                      cache_prompt=False).text()
            assert again == "".join(pieces)
            result = await engine.embed(["a lighthouse", "a ship"])
            assert len(result.vectors) == 2 and abs(float(np.linalg.norm(result.vectors[0])) - 1.0) < 1e-3
        finally:
            engine.close()

    uvloop.run(use())


def test_leaving_a_reply_early_frees_its_slot(model_path: str) -> None:
    async def use() -> None:
        engine = igllama.load(model_path, **SMALL)
        try:
            stream = engine.chat([{"role": "user", "content": "Count."}], max_tokens=500,
                                 logit_bias=tuple((int(k), v) for k, v in NEVER_STOP.items()))
            async for _ in stream:
                break
            await stream.aclose()
            # One slot: the next reply can only start once the first one's slot is free.
            text = await asyncio.wait_for(engine.chat([{"role": "user", "content": "Hi"}], max_tokens=2).text(),
                                          TIMEOUT)
            assert isinstance(text, str)
        finally:
            engine.close()

    uvloop.run(use())


def test_settings_are_checked() -> None:
    with pytest.raises(TypeError, match="ctx_sise"):
        igllama.Server("model.gguf", ctx_sise=512)


def test_a_file_that_is_not_a_model_is_an_error_naming_it(tmp_path: object) -> None:
    from igllama.engine import ModelLoadError

    async def start() -> None:
        server = igllama.Server(str(REPO / "README.md"), port=0)
        with pytest.raises(ModelLoadError, match="README.md"):
            await server.start()

    uvloop.run(start())


def test_serve_blocks_until_a_signal(model_path: str, tmp_path: object) -> None:
    code = f"import igllama, sys; sys.exit(igllama.serve({model_path!r}, port=0, threads=1, threads_batch=1, ctx_size=512))"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        port = None
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            match = re.search(r"ready in .*http://127\.0\.0\.1:(\d+)/v1", line)
            port = int(match.group(1)) if match else None
        assert port is not None, "igllama.serve never said it was ready"
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200, 30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
