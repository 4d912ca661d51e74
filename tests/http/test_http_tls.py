"""HTTPS: the HTTP server behind asyncio's TLS, driven by real clients that trust a test CA.

Tier 3 without a model: handlers stand in for the API. A CA made by
``trustme`` signs the server's certificate for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import requests

import igllama.http.tls as http_tls
from igllama.http import (
    EventStream,
    Limits,
    Request,
    Router,
    Server,
    TLSError,
    tls_context,
)
from tests.http.test_http_server import App as PlainApp
from tests.http.test_http_server import assert_lockstep

trustme = pytest.importorskip("trustme", reason="install the test extra: pip install -e .[test]")

TIMEOUT = 10.0
GET_HEALTH = b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n"


@dataclass(frozen=True)
class Certificates:
    ca: Path  # what clients trust
    cert: Path  # the server's certificate, then any intermediates
    key: Path
    other_key: Path  # the key of another certificate of the same CA
    encrypted_key: Path  # ``key``, encrypted with a passphrase

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    from cryptography.hazmat.primitives import serialization  # trustme's own dependency

    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem",
                         folder / "other-key.pem", folder / "encrypted-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(files.other_key))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    files.encrypted_key.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ))
    return files


@dataclass
class App(PlainApp):
    """test_http_server's handlers, plus a chat-shaped stream and an endless one."""

    def router(self) -> Router:
        router = super().router()
        router.add("POST", "/v1/chat/completions", self.chat)
        router.add("GET", "/endless", self.endless)
        return router

    def chat(self, request: Request) -> EventStream:
        """Streams the last message back one word per chunk, as a streamed chat completion."""
        words = orjson.loads(request.body)["messages"][-1]["content"].split(" ")

        async def chunks() -> AsyncIterator[bytes]:
            for i, word in enumerate(words):
                delta = {"content": word if i == 0 else " " + word}
                yield orjson.dumps({"object": "chat.completion.chunk",
                                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            yield orjson.dumps({"object": "chat.completion.chunk",
                                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield b"[DONE]"

        return EventStream(chunks())

    def endless(self, request: Request) -> EventStream:
        async def tokens() -> AsyncIterator[bytes]:
            try:
                for i in range(100_000):
                    yield b"%d" % i
                    await asyncio.sleep(0.01)
            finally:
                self.stream_closed.set()

        return EventStream(tokens())


@pytest.fixture
async def app() -> App:
    return App()


async def start(app: App, certificates: Certificates, limits: Limits) -> Server:
    context = tls_context(str(certificates.cert), str(certificates.key))
    return await Server.start(app.router(), "127.0.0.1", 0, limits=limits, ssl_context=context)


@pytest.fixture
async def server(app: App, certificates: Certificates) -> AsyncIterator[Server]:
    server = await start(app, certificates, Limits(head_timeout=2.0))
    yield server
    await server.close(grace=1.0)


async def connect_tls(server: Server, certificates: Certificates
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port, ssl=certificates.client_context())


# -- serving


async def test_requests_gets_health_over_https_on_one_kept_connection(
    server: Server, certificates: Certificates
) -> None:
    assert server.scheme == "https"
    session = requests.Session()
    try:
        for _ in range(2):
            reply = await asyncio.to_thread(session.get, f"https://127.0.0.1:{server.port}/health",
                                            verify=str(certificates.ca), timeout=TIMEOUT)
            assert (reply.status_code, reply.json()) == (200, {"status": "ok", "model": "loaded"})
        assert server.connection_count == 1  # keep-alive works through TLS
    finally:
        session.close()


async def test_a_streamed_chat_over_https(server: Server, certificates: Certificates) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "one two three"}], "stream": True}

    def stream() -> tuple[str, list[bytes]]:
        with requests.post(f"https://127.0.0.1:{server.port}/v1/chat/completions", json=body, stream=True,
                           verify=str(certificates.ca), timeout=TIMEOUT) as reply:
            assert reply.status_code == 200
            return reply.headers["content-type"], [line for line in reply.iter_lines() if line]

    content_type, lines = await asyncio.to_thread(stream)
    assert content_type == "text/event-stream"
    assert all(line.startswith(b"data: ") for line in lines)
    assert lines[-1] == b"data: [DONE]"
    chunks = [orjson.loads(line[len(b"data: "):]) for line in lines[:-1]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == "one two three"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_each_event_goes_through_tls_before_the_next_exists(
    server: Server, app: App, certificates: Certificates
) -> None:
    await assert_lockstep(*await connect_tls(server, certificates), app)


async def test_a_client_vanishing_mid_stream_stops_the_generator(
    server: Server, app: App, certificates: Certificates
) -> None:
    reader, writer = await connect_tls(server, certificates)
    writer.write(b"GET /endless HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"data: 0\n\n"), TIMEOUT)
    writer.transport.abort()  # gone without a TLS goodbye
    await asyncio.wait_for(app.stream_closed.wait(), TIMEOUT)
    assert server.connection_count == 0


# -- clients that do not speak TLS


async def test_plain_http_to_the_https_port_gets_no_answer_and_the_server_goes_on(
    server: Server, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(GET_HEALTH)
    try:
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)  # to the end: the server closes
    except ConnectionResetError:
        answer = b""
    writer.close()
    assert b"HTTP/" not in answer
    # The next client is served, and the failed handshake left no error in the log.
    reader, writer = await connect_tls(server, certificates)
    writer.write(GET_HEALTH)
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n"), TIMEOUT)) == b"HTTP/1.1 200 OK\r\n"
    writer.close()
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_a_client_that_never_starts_its_handshake_is_closed(server: Server) -> None:
    # The fixture's head timeout (2 s) bounds the handshake too, not asyncio's 60 s.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    writer.close()


# -- stopping


async def test_an_idle_pooled_client_does_not_hold_up_a_graceful_stop(
    app: App, certificates: Certificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closing a TLS connection sends close_notify and waits for the client's
    # reply, which a pooled connection nobody reads never sends: the wait is
    # bounded by the server's TLS shutdown timeout (here shortened), not
    # asyncio's 30 s.
    monkeypatch.setattr(http_tls, "_TLS_SHUTDOWN_TIMEOUT", 0.5)
    server = await start(app, certificates, Limits(keepalive_timeout=60.0))
    session = requests.Session()
    try:
        reply = await asyncio.to_thread(session.get, f"https://127.0.0.1:{server.port}/health",
                                        verify=str(certificates.ca), timeout=TIMEOUT)
        assert reply.status_code == 200 and server.connection_count == 1
        assert await server.drain(timeout=TIMEOUT)
    finally:
        session.close()
        await server.close(grace=0.0)


# -- refused certificates and keys: one line, naming the file


def test_a_missing_certificate_is_named(certificates: Certificates, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSError) as caught:
        tls_context(str(missing), str(certificates.key))
    assert str(caught.value) == f"cannot read the TLS certificate {missing}: No such file or directory"


def test_a_key_given_as_the_certificate_is_named(certificates: Certificates) -> None:
    with pytest.raises(TLSError) as caught:
        tls_context(str(certificates.key), str(certificates.cert))
    assert str(caught.value) == (f"the TLS certificate file {certificates.key} holds no PEM certificate "
                                 "(a '-----BEGIN CERTIFICATE-----' block)")


def test_a_file_that_is_not_pem_is_named(certificates: Certificates, tmp_path: Path) -> None:
    der = tmp_path / "key.der"
    der.write_bytes(b"0\x82\x04\xbd\x02\x01\x00")
    with pytest.raises(TLSError) as caught:
        tls_context(str(certificates.cert), str(der))
    assert str(caught.value).startswith(f"the TLS private key file {der} holds no PEM private key")


def test_a_key_of_another_certificate_is_named(certificates: Certificates) -> None:
    with pytest.raises(TLSError) as caught:
        tls_context(str(certificates.cert), str(certificates.other_key))
    assert str(caught.value) == (f"the TLS private key {certificates.other_key} is not the key of "
                                 f"the certificate {certificates.cert}")


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(certificates: Certificates) -> None:
    # OpenSSL's default would be a passphrase prompt on the terminal: a service hangs at start.
    with pytest.raises(TLSError) as caught:
        tls_context(str(certificates.cert), str(certificates.encrypted_key))
    assert str(caught.value).startswith(f"the TLS private key {certificates.encrypted_key} is encrypted")
