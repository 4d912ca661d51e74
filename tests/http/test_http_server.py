"""Tier 3: a real server on a free port, driven by real clients over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
import requests

from igllama.http import EventStream, Limits, ListenError, Request, Response, Router, Server

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0


@dataclass
class App:
    """Handlers whose inner state the tests can watch and steer."""

    stream_closed: asyncio.Event = field(default_factory=asyncio.Event)
    proceed: asyncio.Queue[None] = field(default_factory=asyncio.Queue)
    release_slow: asyncio.Event = field(default_factory=asyncio.Event)
    slow_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    def router(self) -> Router:
        router = Router()
        health = Response.json(200, {"status": "ok", "model": "loaded"})
        router.add("GET", "/health", lambda request: health)
        router.add("POST", "/echo", self.echo)
        router.add("GET", "/stream", self.stream)
        router.add("GET", "/slow", self.slow)
        router.add("GET", "/lockstep", self.lockstep)
        return router

    async def echo(self, request: Request) -> Response:
        return Response(200, request.body, b"application/octet-stream")

    def stream(self, request: Request) -> EventStream:
        async def tokens() -> AsyncIterator[bytes]:
            try:
                for i in range(1000):
                    yield orjson.dumps({"token": i})
                    await asyncio.sleep(0.01)
            finally:
                self.stream_closed.set()

        return EventStream(tokens())

    def lockstep(self, request: Request) -> EventStream:
        async def tokens() -> AsyncIterator[bytes]:
            for i in range(3):
                yield b"%d" % i
                await self.proceed.get()  # the next token waits for the test

        return EventStream(tokens())

    async def slow(self, request: Request) -> Response:
        try:
            await self.release_slow.wait()
        except asyncio.CancelledError:
            self.slow_cancelled.set()
            raise
        return Response.json(200, {"slow": "done"})


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one response: Content-Length or chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Reply(int(status_line.split()[1]), headers, body)


async def connect(server: Server, host: str = "127.0.0.1"
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, server.port)


async def is_closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), TIMEOUT) == b""


@pytest.fixture
async def app() -> App:
    return App()


@pytest.fixture
async def server(app: App) -> AsyncIterator[Server]:
    limits = Limits(head_timeout=0.3, max_body_bytes=1000)
    server = await Server.start(app.router(), "127.0.0.1", 0, limits=limits)
    yield server
    app.release_slow.set()
    await server.close(grace=1.0)


GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


async def test_keep_alive_serves_two_requests_on_one_socket(server: Server) -> None:
    reader, writer = await connect(server)
    for _ in range(2):
        writer.write(GET_HEALTH)
        reply = await read_reply(reader)
        assert reply.status == 200
        assert orjson.loads(reply.body) == {"status": "ok", "model": "loaded"}
        assert reply.headers["access-control-allow-origin"] == "*"
    assert server.connection_count == 1
    writer.close()


async def test_head_is_get_without_the_body_and_the_connection_goes_on(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"HEAD /health HTTP/1.1\r\nHost: test\r\n\r\n" + GET_HEALTH)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert length == len(orjson.dumps({"status": "ok", "model": "loaded"}))  # the GET's, without its bytes
    reply = await read_reply(reader)  # the next response starts right after the head
    assert reply.status == 200 and orjson.loads(reply.body)["status"] == "ok"
    writer.close()


async def test_pipelined_requests_come_back_in_order(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst"
        + b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n"
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"6\r\nsecond\r\n0\r\n\r\n"
    )
    replies = [await read_reply(reader) for _ in range(3)]
    assert [(r.status, r.body) for r in replies][::2] == [(200, b"first"), (200, b"second")]
    assert replies[1].status == 404
    writer.close()


async def test_preflight_is_204_with_cors(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: t\r\nOrigin: http://page.example\r\n"
        b"Access-Control-Request-Method: POST\r\n"
        b"Access-Control-Request-Headers: content-type, authorization\r\n\r\n"
    )
    reply = await read_reply(reader)
    assert reply.status == 204 and reply.body == b""
    assert reply.headers["access-control-allow-origin"] == "*"
    assert "POST" in reply.headers["access-control-allow-methods"]
    assert "content-length" not in reply.headers
    writer.close()


async def test_404_and_405_are_json_errors_with_cors(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"GET /v1/nothing HTTP/1.1\r\nHost: t\r\n\r\n"
        b"DELETE /health HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    missing, wrong_method = await read_reply(reader), await read_reply(reader)
    assert missing.status == 404
    assert orjson.loads(missing.body)["error"]["type"] == "invalid_request_error"
    assert wrong_method.status == 405 and wrong_method.headers["allow"] == "GET, OPTIONS"
    for reply in (missing, wrong_method):
        assert reply.headers["access-control-allow-origin"] == "*"
        assert reply.headers["access-control-allow-headers"] == "Content-Type, Authorization"
    writer.close()


async def test_slowloris_gets_408_and_is_closed(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /health HTTP/1.1\r\nHost: t\r\nX-Slow: ")
    reply = await read_reply(reader)  # the head timeout is 0.3 s in this fixture
    assert reply.status == 408 and reply.headers["connection"] == "close"
    assert await is_closed_by_server(reader)


async def test_body_over_the_limit_is_413_and_closes(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
    reply = await read_reply(reader)
    assert reply.status == 413 and orjson.loads(reply.body)["error"]["code"] == 413
    assert reply.headers["access-control-allow-origin"] == "*"
    assert await is_closed_by_server(reader)


async def test_expect_100_continue_gets_continue_before_sending_the_body(server: Server) -> None:
    reader, writer = await connect(server)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    reply = await read_reply(reader)
    assert (reply.status, reply.body) == (200, b"body")
    writer.close()


async def test_client_vanishing_mid_stream_stops_the_generator(server: Server, app: App) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert b"Content-Type: text/event-stream" in head
    first = await asyncio.wait_for(reader.readuntil(b"\n\n"), TIMEOUT)
    assert b'data: {"token":0}' in first
    writer.transport.abort()  # gone without a goodbye
    await asyncio.wait_for(app.stream_closed.wait(), TIMEOUT)
    assert server.connection_count == 0


async def test_each_event_is_sent_before_the_next_exists(server: Server, app: App) -> None:
    await assert_lockstep(*await connect(server), app)


async def assert_lockstep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, app: App) -> None:
    """GET /lockstep: each frame must arrive while the generator waits for the test to ask for the next."""
    writer.write(b"GET /lockstep HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
    for i in range(3):
        # Had the server (or TLS) held the frame back, this read would time out.
        frame = await asyncio.wait_for(reader.readuntil(b"\n\n\r\n"), TIMEOUT)
        assert frame == b"9\r\ndata: %d\n\n\r\n" % i
        app.proceed.put_nowait(None)
    assert await asyncio.wait_for(reader.readexactly(5), TIMEOUT) == b"0\r\n\r\n"
    writer.close()


async def test_requests_library_keeps_its_connection(server: Server) -> None:
    def two_calls() -> tuple[list[int], list[object]]:
        with requests.Session() as session:
            url = f"http://127.0.0.1:{server.port}"
            first = session.get(f"{url}/health", timeout=TIMEOUT)
            second = session.post(f"{url}/echo", data=b"z" * 900, timeout=TIMEOUT)
            return [first.status_code, second.status_code], [first.json(), len(second.content)]

    codes, bodies = await asyncio.to_thread(two_calls)
    assert codes == [200, 200] and bodies == [{"status": "ok", "model": "loaded"}, 900]


async def test_graceful_close_lets_the_response_in_flight_finish(
    server: Server, app: App
) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(server.close(grace=TIMEOUT))
    await asyncio.sleep(0.05)
    with pytest.raises(OSError):  # no longer accepting
        await asyncio.open_connection("127.0.0.1", server.port)
    assert not closing.done()
    app.release_slow.set()
    reply = await read_reply(reader)
    assert reply.status == 200 and orjson.loads(reply.body) == {"slow": "done"}
    assert reply.headers["connection"] == "close"
    await asyncio.wait_for(closing, TIMEOUT)
    assert not app.slow_cancelled.is_set()


async def test_close_cancels_what_outlives_the_grace(server: Server, app: App) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.05)
    await asyncio.wait_for(server.close(grace=0.1), TIMEOUT)
    await asyncio.wait_for(app.slow_cancelled.wait(), TIMEOUT)
    assert await is_closed_by_server(reader)


async def test_port_in_use_is_a_one_line_error(server: Server, app: App) -> None:
    with pytest.raises(ListenError) as caught:
        await Server.start(app.router(), "127.0.0.1", server.port)
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{server.port}: address already in use"


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_serves_on_ipv6(app: App) -> None:
    server = await Server.start(app.router(), "::1", 0)
    try:
        reader, writer = await connect(server, "::1")
        writer.write(GET_HEALTH)
        assert (await read_reply(reader)).status == 200
        writer.close()
    finally:
        await server.close(grace=1.0)


async def test_localhost_binds_every_address_on_one_port(app: App) -> None:
    server = await Server.start(app.router(), "localhost", 0)
    try:
        assert server.port > 0
        reader, writer = await connect(server, "127.0.0.1")
        writer.write(GET_HEALTH)
        assert (await read_reply(reader)).status == 200
        writer.close()
    finally:
        await server.close(grace=1.0)


# -- the process: exit codes and signals ------------------------------------------------------

SERVE = textwrap.dedent("""
    import asyncio, sys
    from igllama.http import Limits, Response, Router, serve

    async def slow(request):
        await asyncio.sleep(0.5)
        return Response.json(200, {"slow": "done"})

    async def forever(request):
        await asyncio.Event().wait()

    router = Router()
    router.add("GET", "/health", lambda request: Response.json(200, {"status": "ok"}))
    router.add("GET", "/slow", slow)
    router.add("GET", "/forever", forever)
    sys.exit(serve(router, "127.0.0.1", int(sys.argv[1]), limits=Limits(shutdown_grace=60),
                   on_started=lambda server: print(server.port, flush=True)))
""")


def start_process(port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", SERVE, str(port)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@contextlib.contextmanager
def in_flight(port: int, path: bytes) -> Iterator[socket.socket]:
    """A connection whose request for ``path`` the server is working on."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        # A first answer proves the server has accepted this connection.
        client.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.recv(65536).startswith(b"HTTP/1.1 200 OK")
        client.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        time.sleep(0.1)  # let the handler start
        yield client


def test_process_on_a_busy_port_exits_1_with_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        process = start_process(port)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert stderr == f"igllama: cannot listen on 127.0.0.1:{port}: address already in use\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_stops_cleanly_on_a_signal(signum: signal.Signals) -> None:
    process = start_process(0)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        reply = requests.get(f"http://127.0.0.1:{port}/health", timeout=TIMEOUT)
        assert reply.json() == {"status": "ok"}
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_process_finishes_the_response_in_flight_before_exiting() -> None:
    process = start_process(0)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with in_flight(port, b"/slow") as client:
            process.send_signal(signal.SIGTERM)
            reply = b""
            while chunk := client.recv(65536):
                reply += chunk
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b'{"slow":"done"}')
    assert b"Connection: close" in reply
    assert process.returncode == 0, stderr


def test_second_signal_stops_without_waiting_for_the_grace() -> None:
    process = start_process(0)
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        with in_flight(port, b"/forever") as client:
            process.send_signal(signal.SIGTERM)
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(timeout=0.5)  # the 60 s grace is running
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=10)
            assert client.recv(65536) == b""  # cut off: no response for /forever
    finally:
        process.kill()
    assert process.returncode == 0, stderr
