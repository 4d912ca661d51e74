"""Listening sockets, the connections they accept, and a graceful stop on a signal."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Callable, Sequence

from .cors import ANY_ORIGIN, CorsPolicy
from .errors import ListenError, default_error_body
from .limits import Limits
from .protocol import ErrorBody, HTTPProtocol
from .router import Router
from .tls import tls_arguments

logger = logging.getLogger("igllama.http")

DEFAULT_LIMITS = Limits()
_BACKLOG = 2048
_REASONS = {
    errno.EADDRINUSE: "address already in use",
    errno.EACCES: "permission denied",
    errno.EADDRNOTAVAIL: "address not available on this machine",
}


class Server:
    """An HTTP/1.1 server listening on one host and port.

    Create it with ``await Server.start(...)``; it serves on the running
    event loop (uvloop when started through ``serve``) until ``close``.
    """

    def __init__(self, host: str, port: int, listeners: Sequence[asyncio.AbstractServer],
                 connections: set[HTTPProtocol], *, scheme: str = "http") -> None:
        self.host = host
        self.port = port
        self.scheme = scheme
        """``"https"`` when the server speaks TLS, ``"http"`` otherwise: the scheme of its URLs."""
        self._listeners = listeners
        self._connections = connections

    @classmethod
    async def start(
        cls,
        router: Router,
        host: str,
        port: int,
        *,
        limits: Limits = DEFAULT_LIMITS,
        error_body: ErrorBody = default_error_body,
        ssl_context: ssl.SSLContext | None = None,
        cors: CorsPolicy = ANY_ORIGIN,
    ) -> Server:
        """Bind ``host:port`` (port 0 picks a free one) and start accepting connections.

        ``host`` may be an IPv4 or IPv6 address or a name such as
        ``localhost``, in which case every address it resolves to is bound,
        all on the same port; or several of these separated by commas. Raises ``ListenError`` with a one-line message
        when it cannot listen. With ``ssl_context`` (see ``tls_context``)
        every connection starts with a TLS handshake: the server speaks HTTPS.
        ``cors`` says which browser pages may read the responses (any, by default).
        """
        loop = asyncio.get_running_loop()
        connections: set[HTTPProtocol] = set()

        def make_protocol() -> HTTPProtocol:
            return HTTPProtocol(router, limits, error_body, connections, cors=cors)

        tls = tls_arguments(loop, ssl_context, limits)
        sockets = await _bind(loop, host, port)
        listeners = []
        try:
            for sock in sockets:
                listeners.append(
                    await loop.create_server(make_protocol, sock=sock, backlog=_BACKLOG, **tls)
                )
        except BaseException:
            for listener in listeners:
                listener.close()
            for sock in sockets:
                sock.close()
            raise
        bound_port = sockets[0].getsockname()[1]
        # (With several hosts, URLs name the first.)
        return cls(host.split(",")[0].strip(), bound_port, listeners, connections,
                   scheme="http" if ssl_context is None else "https")

    @property
    def connection_count(self) -> int:
        """Connections currently open."""
        return len(self._connections)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting and wait up to ``timeout`` seconds for the connections to close.

        Idle connections close at once; a connection with a response in
        flight closes when it is done (its response says ``Connection:
        close``). True when none is left open. Can be called again, to wait
        some more after the responses were told to end.
        """
        for listener in self._listeners:
            listener.close()
        connections = list(self._connections)
        for connection in connections:
            connection.shutdown()
        waiters = [asyncio.ensure_future(connection.wait_closed()) for connection in connections]
        if not waiters:
            return True
        _, pending = await asyncio.wait(waiters, timeout=timeout)
        for waiter in pending:
            waiter.cancel()
        return not pending

    async def close(self, grace: float) -> None:
        """Stop accepting, let responses in flight finish for ``grace`` seconds, then close.

        Whatever still runs after ``grace`` is cancelled.
        """
        if not await self.drain(grace):
            logger.warning("grace period over: aborting %d connection(s)", len(self._connections))
        for connection in list(self._connections):
            connection.abort()
        for listener in self._listeners:
            await listener.wait_closed()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _bind(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address of ``host``, all on one port. ``host`` may
    list several hosts separated by commas (llama-server's ``--host 127.0.0.1,::1``)."""
    resolved: list[tuple[str, list[tuple[int, tuple[object, ...]]]]] = []
    for name in (part.strip() for part in host.split(",")):
        if not name:
            raise ListenError(f"cannot listen on {host!r}: an empty host in the list", errno.EADDRNOTAVAIL)
        try:
            infos = await loop.getaddrinfo(
                name, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
        except socket.gaierror as exc:
            raise ListenError(
                f"cannot listen on {_where(name, port)}: cannot resolve host ({exc.strerror})", exc.errno
            ) from exc
        resolved.append((name, list(dict.fromkeys((info[0], info[4]) for info in infos))))
    sockets: list[socket.socket] = []
    bound: set[tuple[int, object]] = set()
    chosen_port = port
    try:
        for name, addresses in resolved:
            bound_before = len(sockets)
            for family, address in addresses:
                if (family, address[0]) in bound:  # the same address named twice
                    continue
                if chosen_port:
                    address = (address[0], chosen_port, *address[2:])
                try:
                    sock = _listening_socket(family, address)
                except OSError as exc:
                    # Like asyncio: an IPv6 address on a host without IPv6 is
                    # skipped when another address of the name can be bound.
                    if exc.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:
                        continue
                    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
                    raise ListenError(f"cannot listen on {_where(name, chosen_port)}: {reason}", exc.errno) from exc
                sockets.append(sock)
                bound.add((family, address[0]))
                # With port 0, every further address reuses the port the first got.
                chosen_port = sock.getsockname()[1]
            if len(sockets) == bound_before and not any((f, a[0]) in bound for f, a in addresses):
                raise ListenError(f"cannot listen on {_where(name, port)}: no usable address", errno.EADDRNOTAVAIL)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _listening_socket(family: int, address: tuple[object, ...]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR lets a restarted server bind while old connections
        # sit in TIME_WAIT; it does not allow two live listeners (unlike
        # SO_REUSEPORT), so "address already in use" still means it.
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # Keep "::1" and "127.0.0.1" as separate sockets, as asyncio does.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def wait_for_signal() -> int:
    """Return the number of the first SIGINT or SIGTERM the process receives."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()

    def on_signal(signum: int) -> None:
        if not received.done():
            received.set_result(signum)

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await received
    finally:
        # Restored default handlers make a second Ctrl-C stop at once.
        for signum in signals:
            loop.remove_signal_handler(signum)


async def run_until_signal(server: Server, grace: float = DEFAULT_LIMITS.shutdown_grace) -> int:
    """Serve until SIGINT or SIGTERM, then close ``server`` gracefully; return the signal.

    Responses in flight get ``grace`` seconds to finish; a second signal
    during that time closes everything at once.
    """
    signum = await wait_for_signal()
    logger.info("received %s, stopping (a second signal stops at once)",
                signal.Signals(signum).name)
    closing = asyncio.ensure_future(server.close(grace))
    second_signal = asyncio.ensure_future(wait_for_signal())
    await asyncio.wait({closing, second_signal}, return_when=asyncio.FIRST_COMPLETED)
    if second_signal.done():
        logger.warning("second signal: closing every connection now")
        await server.close(0.0)
    else:
        second_signal.cancel()
    await closing
    return signum


def serve(
    router: Router,
    host: str,
    port: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    error_body: ErrorBody = default_error_body,
    on_started: Callable[[Server], None] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
    """Run a server on uvloop until SIGINT/SIGTERM; return the process exit code.

    A socket that cannot be bound is reported on stderr in one line and
    gives 1; a signal gives a graceful stop within ``limits.shutdown_grace``
    and 0. With ``ssl_context`` the server speaks HTTPS.
    """
    import uvloop

    async def main() -> int:
        try:
            server = await Server.start(router, host, port, limits=limits, error_body=error_body,
                                        ssl_context=ssl_context)
        except ListenError as exc:
            print(f"igllama: {exc}", file=sys.stderr)
            return 1
        if on_started is not None:
            on_started(server)
        await run_until_signal(server, limits.shutdown_grace)
        return 0

    return uvloop.run(main())
