"""In-process servers, for what a test must see inside: loading, disconnects, unexpected failures.

The server and its engine run on `BackgroundLoop`'s thread; the tests are
plain clients (sockets, requests) in the main thread.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import requests

from igllama.api import App, AppSettings, create_app, error_body
from igllama.engine import Engine, EngineConfig, ModelConfig
from igllama.engine.pool import EnginePool
from igllama.http import Request, Server
from tests.api.conftest import (
    NEVER_STOP,
    TIMEOUT,
    BackgroundLoop,
    assert_cors,
    error_of,
    user,
    wait_until,
)


@dataclass
class Running:
    app: App
    server: Server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def start(loop: BackgroundLoop, app: App) -> Running:
    return Running(app, loop.run(Server.start(app.router, "127.0.0.1", 0, error_body=error_body)))


@pytest.fixture(scope="module")
def engine(model_path: str) -> Iterator[Engine]:
    """One slot: a request that is not cancelled blocks every later one."""
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=2048, n_slots=1, n_threads=1, n_threads_batch=1))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def one_slot(background_loop: BackgroundLoop, engine: Engine) -> Iterator[Running]:
    app = create_app(AppSettings("one-slot", max_tokens=2048, temperature=0.0))
    app.set_pool(EnginePool.of("one-slot", engine))
    running = start(background_loop, app)
    yield running
    background_loop.run(running.server.close(1.0))


@pytest.fixture
def loading(background_loop: BackgroundLoop) -> Iterator[Running]:
    """A server whose model has not loaded yet: an App without an engine."""
    running = start(background_loop, create_app(AppSettings("still-loading")))
    yield running
    background_loop.run(running.server.close(1.0))


def send_chat(port: int, body: dict[str, Any]) -> socket.socket:
    """A raw connection that has sent one chat request, for a client that vanishes."""
    data = orjson.dumps(body)
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def receive_frames(sock: socket.socket, n_frames: int) -> bytes:
    received = b""
    while received.count(b"data: ") < n_frames:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the stream early: {received!r}"
        received += chunk
    return received


ENDLESS = user("Tell me a very long story.", 1000, logit_bias=NEVER_STOP)


# -- loading


def test_while_loading_health_and_api_answer_503_then_200(loading: Running, engine: Engine) -> None:
    health = requests.get(f"{loading.url}/health", timeout=TIMEOUT)
    assert health.status_code == 503
    assert health.json() == {"status": "loading", "model": "loading", "progress": 0.0}
    assert_cors(health)
    for path, body in [("/v1/chat/completions", user("Hi", 1)), ("/v1/embeddings", {"input": "Hi"})]:
        response = requests.post(f"{loading.url}{path}", json=body, timeout=TIMEOUT)
        error = error_of(response, 503)
        assert "loading" in error["message"] and "/health" in error["message"]
        assert_cors(response)

    loading.app.load_progress = 0.5  # what serve.py's progress callback does
    assert requests.get(f"{loading.url}/health", timeout=TIMEOUT).json()["progress"] == 0.5

    loading.app.set_pool(EnginePool.of("still-loading", engine))
    health = requests.get(f"{loading.url}/health", timeout=TIMEOUT)
    assert (health.status_code, health.json()) == (200, {"status": "ok", "model": "loaded"})
    reply = requests.post(f"{loading.url}/v1/chat/completions", json=user("Hi", 1), timeout=TIMEOUT)
    assert reply.status_code == 200
    assert reply.json()["model"] == "still-loading"


# -- unexpected failures


def test_an_unexpected_failure_is_500_without_internals(loading: Running) -> None:
    async def broken(request: Request) -> Any:
        raise RuntimeError("secret detail at /srv/igllama/engine.py line 42")

    loading.app.router.add("POST", "/v1/broken", broken)
    response = requests.post(f"{loading.url}/v1/broken", json={}, timeout=TIMEOUT)
    error = error_of(response, 500)
    assert error["type"] == "server_error"
    assert error["message"] == "internal server error"
    for leak in ("secret", "engine.py", "RuntimeError", "Traceback"):
        assert leak not in response.text
    assert_cors(response)
    # The server carries on.
    assert requests.get(f"{loading.url}/health", timeout=TIMEOUT).status_code == 503


# -- clients that go away


def test_a_client_leaving_mid_stream_stops_its_generation(one_slot: Running, engine: Engine) -> None:
    scheduler = engine.scheduler
    with send_chat(one_slot.server.port, {**ENDLESS, "stream": True}) as sock:
        received = receive_frames(sock, 4)  # the role chunk and three content chunks
        assert received.startswith(b"HTTP/1.1 200 OK")
        [sequence] = scheduler.running
    wait_until(lambda: not scheduler.running and not scheduler.waiting, 10,
               "generation went on after the client left")
    assert sequence.n_generated < 200  # of 1000: it stopped when the client left

    # The one slot is free: the next request is served now, not after 1000 tokens.
    reply = requests.post(f"{one_slot.url}/v1/chat/completions", json=user("Hi", 2, logit_bias=NEVER_STOP),
                          timeout=TIMEOUT)
    assert reply.json()["usage"]["completion_tokens"] == 2


def test_a_client_leaving_before_a_whole_reply_stops_its_generation(one_slot: Running, engine: Engine) -> None:
    scheduler = engine.scheduler
    with send_chat(one_slot.server.port, ENDLESS):
        wait_until(lambda: bool(scheduler.running) and scheduler.running[0].n_generated >= 3, TIMEOUT,
                   "generation did not start")
        [sequence] = scheduler.running
    wait_until(lambda: not scheduler.running and not scheduler.waiting, 10,
               "generation went on after the client left")
    assert sequence.n_generated < 200
    reply = requests.post(f"{one_slot.url}/v1/chat/completions", json=user("Hi", 2, logit_bias=NEVER_STOP),
                          timeout=TIMEOUT)
    assert reply.json()["usage"]["completion_tokens"] == 2


def test_a_client_leaving_the_queue_never_gets_the_slot(one_slot: Running, engine: Engine) -> None:
    scheduler = engine.scheduler
    with send_chat(one_slot.server.port, {**ENDLESS, "stream": True}) as first:
        receive_frames(first, 2)
        with send_chat(one_slot.server.port, {**ENDLESS, "stream": True}):
            wait_until(lambda: len(scheduler.waiting) == 1, TIMEOUT, "the second request was not queued")
            [queued] = scheduler.waiting
        wait_until(lambda: not scheduler.waiting, 10, "the queued request stayed after its client left")
        assert queued.n_generated == 0
        assert len(scheduler.running) == 1  # the first one is still being served
        assert b"data: " in first.recv(65536)
    wait_until(lambda: not scheduler.running, 10, "generation went on after the client left")
