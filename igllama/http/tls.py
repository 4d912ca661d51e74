"""HTTPS: the server's TLS context, checked when it starts, and the TLS arguments of its listeners."""

from __future__ import annotations

import asyncio
import re
import ssl
import sys
from pathlib import Path
from typing import Any

from .limits import Limits

# How long a closing TLS connection may take to send its last bytes and its
# close_notify alert. Our close_notify goes out at once; waiting for the
# client's reply is not needed (RFC 8446 §6.1: each side closes its own
# write side), and a pooled client that is not reading never sends it, so
# asyncio's 30 s default would hold such an idle connection (and a graceful
# stop waiting on it) for half a minute.
_TLS_SHUTDOWN_TIMEOUT = 5.0
# The PEM blocks OpenSSL reads a certificate chain and a private key from.
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----")
_PEM_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )?PRIVATE KEY-----")

class TLSError(ValueError):
    """A certificate or key that cannot serve HTTPS; ``str()`` is one line naming the file."""


class _EncryptedKey(Exception):
    pass


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server-side TLS context for a PEM certificate chain and its PEM private key.

    ``cert_file`` holds the server's certificate, then any intermediate
    certificates; ``key_file`` holds its private key, unencrypted. Raises
    ``TLSError`` with a one-line message naming the file at fault, so a bad
    file stops the server when it starts instead of failing every handshake.
    """
    _check_pem(cert_file, "certificate", "CERTIFICATE", _PEM_CERTIFICATE)
    _check_pem(key_file, "private key", "PRIVATE KEY", _PEM_PRIVATE_KEY)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # Without a password callback, OpenSSL would prompt for an encrypted
        # key's passphrase on the terminal: a service would hang at start.
        context.load_cert_chain(cert_file, key_file, password=_refuse_password)
    except _EncryptedKey:
        raise TLSError(f"the TLS private key {key_file} is encrypted: "
                       f"decrypt it first (openssl pkey -in {key_file} -out key.pem)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSError(f"the TLS private key {key_file} is not the key of "
                           f"the certificate {cert_file}") from None
        raise TLSError(f"cannot use the TLS certificate {cert_file} with the key {key_file}: "
                       f"{exc.reason or exc}") from None
    except OSError as exc:  # a file gone since _check_pem read it
        raise TLSError(f"cannot read the TLS certificate {cert_file} or the key {key_file}: "
                       f"{exc.strerror}") from None
    # RFC 7301: a client offering h2 first (curl, browsers) learns that this
    # server speaks HTTP/1.1 only.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _check_pem(path: str, what: str, label: str, block: re.Pattern[bytes]) -> None:
    """Refuse a file that cannot be read or holds no PEM block of its kind.

    ``load_cert_chain`` reports these without saying which file is at fault.
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise TLSError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None
    if not block.search(pem):
        raise TLSError(f"the TLS {what} file {path} holds no PEM {what} "
                       f"(a '-----BEGIN {label}-----' block)")


def _refuse_password() -> bytes:
    raise _EncryptedKey


def tls_arguments(loop: asyncio.AbstractEventLoop, ssl_context: ssl.SSLContext | None,
                   limits: Limits) -> dict[str, Any]:
    """``create_server``'s TLS arguments; none for plain HTTP."""
    if ssl_context is None:
        return {}
    arguments: dict[str, Any] = {
        "ssl": ssl_context,
        # The protocol's head timeout starts in connection_made, which a TLS
        # connection reaches only once its handshake is done: bounding the
        # handshake by the same time keeps a client that connects and never
        # speaks from holding a socket for asyncio's default 60 s.
        "ssl_handshake_timeout": limits.head_timeout,
    }
    # asyncio's own loop takes this argument from Python 3.11 on; uvloop always.
    if sys.version_info >= (3, 11) or not isinstance(loop, asyncio.BaseEventLoop):
        arguments["ssl_shutdown_timeout"] = _TLS_SHUTDOWN_TIMEOUT
    return arguments
