"""Never hang, never lose a request: engine failures, the queue bound, draining and shutdown.

In-process servers (each with an engine of its own, since some tests break
it on purpose) for what must be injected; real `igllama api` processes for
signals.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from igllama.api import AppSettings, create_app, error_body
from igllama.engine import Engine, EngineConfig, ModelConfig
from igllama.engine.pool import EnginePool
from igllama.engine.speculation import SpecConfig
from igllama.http import Server
from tests.api.conftest import (
    NEVER_STOP,
    ONE_THREAD,
    TIMEOUT,
    BackgroundLoop,
    chat,
    error_of,
    sse_payloads,
    start_process,
    user,
    wait_until,
)

ENDLESS = user("Tell me a very long story.", 2000, logit_bias=NEVER_STOP)


class Served:
    """An in-process server in front of an engine of its own."""

    def __init__(self, loop: BackgroundLoop, engine: Engine) -> None:
        self.loop = loop
        self.engine = engine
        self.app = create_app(AppSettings("robust", max_tokens=2048, temperature=0.0))
        self.app.set_pool(EnginePool.of("robust", engine))
        self.server = loop.run(Server.start(self.app.router, "127.0.0.1", 0, error_body=error_body))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def close(self) -> None:
        self.loop.run(self.server.close(1.0))
        self.engine.close()


@pytest.fixture
def served(background_loop: BackgroundLoop, model_path: str, request: pytest.FixtureRequest) -> Iterator[Served]:
    """One slot; parametrized indirectly with a dict, it sets those EngineConfig fields."""
    fields: dict[str, Any] = getattr(request, "param", {})
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=2048, n_slots=1, n_threads=1, n_threads_batch=1,
                                 **fields))
    running = Served(background_loop, engine)
    yield running
    running.close()


def open_stream(port: int, body: dict[str, Any]) -> socket.socket:
    data = orjson.dumps({**body, "stream": True})
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before {marker!r}: {received[-500:]!r}"
        received += chunk
    return received


def stream_payloads(raw: bytes) -> list[bytes]:
    """The SSE payloads of a whole chunked HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    data, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        data, rest = data + rest[:size], rest[size + 2 :]
    return sse_payloads(data)


def read_whole_stream(sock: socket.socket, received: bytes = b"") -> list[bytes]:
    return stream_payloads(read_until(sock, b"\r\n0\r\n\r\n", received))


# -- the engine thread stops or fails


def test_a_dead_engine_thread_means_503_everywhere_not_a_hang(served: Served) -> None:
    with open_stream(served.server.port, ENDLESS) as sock:
        received = read_until(sock, b'"content":"', b"")

        def thread_killer(*args: Any) -> Any:
            raise SystemExit("injected: the engine thread dies")

        served.engine.scheduler.plan = thread_killer  # type: ignore[method-assign]
        payloads = read_whole_stream(sock, received)
    # The stream in flight ends with an error frame and [DONE], not a cut connection.
    assert payloads[-1] == b"[DONE]"
    error = orjson.loads(payloads[-2])["error"]
    assert error["code"] == "engine_unavailable" and "engine thread stopped" in error["message"]

    health = requests.get(f"{served.url}/health", timeout=TIMEOUT)
    assert health.status_code == 503
    assert health.json()["status"] == "error" and "injected" in health.json()["error"]
    started = time.monotonic()
    for path, body in [("/v1/chat/completions", user("Hi", 2)), ("/v1/embeddings", {"input": "Hi"})]:
        response = requests.post(f"{served.url}{path}", json=body, timeout=TIMEOUT)
        assert error_of(response, 503)["code"] == "engine_unavailable"
        assert response.headers["retry-after"] == "1"
    assert time.monotonic() - started < 5  # at once, not after a timeout


def test_a_failed_step_fails_the_running_request_and_the_engine_serves_on(served: Served) -> None:
    scheduler = served.engine.scheduler
    plan = scheduler.plan
    with open_stream(served.server.port, ENDLESS) as sock:
        received = read_until(sock, b'"content":"')
        failures = iter([RuntimeError("injected bug")])

        def plan_once_broken() -> Any:
            for failure in failures:
                raise failure
            return plan()

        scheduler.plan = plan_once_broken  # type: ignore[method-assign]
        payloads = read_whole_stream(sock, received)
    assert payloads[-1] == b"[DONE]"
    error = orjson.loads(payloads[-2])["error"]
    assert error["type"] == "server_error" and "injected bug" in error["message"]
    # The engine goes on: health is green and the next request is served.
    assert requests.get(f"{served.url}/health", timeout=TIMEOUT).status_code == 200
    reply = chat(served.url, user("Hi", 3, logit_bias=NEVER_STOP))
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


# (Without speculation: the demo model's long reply loops, and drafts would finish it before the stall.)
@pytest.mark.parametrize("served", [{"watchdog_seconds": 1.0, "spec": SpecConfig(enabled=False)}], indirect=True)
def test_a_stalled_engine_fails_its_requests_instead_of_hanging(served: Served) -> None:
    runner = served.engine.runner
    decode = runner.decode
    stalls = iter([6.0])

    def decode_that_stalls_once() -> None:
        for seconds in stalls:
            time.sleep(seconds)  # a decode that hangs (a driver, a deadlock)
        decode()

    with open_stream(served.server.port, ENDLESS) as sock:
        received = read_until(sock, b'"content":"')
        runner.decode = decode_that_stalls_once  # type: ignore[method-assign]
        wait_until(lambda: served.engine.health() is not None, 10, "the stall was not noticed")
        health = requests.get(f"{served.url}/health", timeout=TIMEOUT)
        assert health.status_code == 503 and "no progress" in health.json()["error"]
        payloads = read_whole_stream(sock, received)
    assert orjson.loads(payloads[-2])["error"]["code"] == "engine_unavailable"
    # Once the decode returns, the engine serves again.
    wait_until(lambda: served.engine.health() is None, 15, "the engine did not recover")
    assert chat(served.url, user("Hi", 2, logit_bias=NEVER_STOP)).status_code == 200


# -- the queue bound


@pytest.mark.parametrize("served", [{"max_queue": 1}], indirect=True)
def test_beyond_the_queue_bound_requests_get_503_with_retry_after(served: Served) -> None:
    with open_stream(served.server.port, ENDLESS) as running, open_stream(served.server.port, ENDLESS) as queued:
        read_until(running, b'"content":"')
        read_until(queued, b'"role":"assistant"')  # accepted, waiting for the slot
        refused = chat(served.url, user("Hi", 2))
        error = error_of(refused, 503)
        assert error["code"] == "server_busy" and "busy" in error["message"]
        assert refused.headers["retry-after"] == "1"
    wait_until(lambda: served.engine.n_in_flight == 0, 10, "the cut requests were not released")
    assert chat(served.url, user("Hi", 2)).status_code == 200


# -- draining


def test_a_draining_app_answers_503_and_health_says_draining(served: Served) -> None:
    served.app.drain()
    health = requests.get(f"{served.url}/health", timeout=TIMEOUT)
    assert (health.status_code, health.json()) == (503, {"status": "draining"})
    refused = chat(served.url, user("Hi", 2))
    assert error_of(refused, 503)["code"] == "shutting_down"
    assert refused.headers["retry-after"] == "1"


def start_server(tmp_path: Path, *flags: str) -> Any:
    return start_process(["-c", "2048", "-np", "2", "--temp", "0", *ONE_THREAD, *flags], tmp_path / "stderr.log")


def test_sigterm_lets_a_stream_in_flight_finish(model_path: str, tmp_path: Path) -> None:
    process = start_server(tmp_path)
    try:
        with open_stream(process.port, user("Count to one hundred.", 40, logit_bias=NEVER_STOP)) as sock:
            received = read_until(sock, b'"content":"')
            process.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining" in process.stderr(), 10, "no drain was logged")
            with pytest.raises(requests.ConnectionError):  # no new connections
                requests.get(f"{process.url}/health", timeout=5)
            payloads = read_whole_stream(sock, received)
        assert payloads[-1] == b"[DONE]"
        assert orjson.loads(payloads[-2])["choices"][0]["finish_reason"] == "length"
        assert process.process.wait(30) == 0
        assert "200 prompt=" in process.stderr() and "499" not in process.stderr()
    finally:
        process.stop()


def test_sigterm_ends_a_stream_at_the_shutdown_timeout_with_an_error_and_done(
    model_path: str, tmp_path: Path
) -> None:
    process = start_server(tmp_path, "--shutdown-timeout", "1")
    try:
        with open_stream(process.port, ENDLESS) as sock:
            received = read_until(sock, b'"content":"')
            signalled = time.monotonic()
            process.process.send_signal(signal.SIGTERM)
            payloads = read_whole_stream(sock, received)
        assert payloads[-1] == b"[DONE]"
        error = orjson.loads(payloads[-2])["error"]
        assert error["code"] == "shutting_down" and "--shutdown-timeout 1" in error["message"]
        assert process.process.wait(30) == 0
        assert time.monotonic() - signalled < 10
        assert "503 failed" in process.stderr()
    finally:
        process.stop()
