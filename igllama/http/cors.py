"""Which browser pages may call the server: the CORS fields of each response.

The Fetch standard's CORS protocol: a page's script may read a response from
another origin only when the response names that origin (or `*`) in
Access-Control-Allow-Origin; before a request with a JSON body or an
Authorization header the browser sends a preflight OPTIONS (answered by the
router) and reads the same fields from it.

By default any origin may call (`*`, no credentials): the fields are one
constant, sent with every response. `--cors-origins` (llama-server's flag)
narrows that to a list of origins, or to pages served from this machine
(`localhost`); the response then names the caller's own origin when it is
allowed, and no origin at all otherwise, so the browser withholds the reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

DEFAULT_METHODS: Final = "GET, POST, OPTIONS"
# Authorization must be named: the Fetch standard never lets a wildcard cover it.
_ALLOW_HEADERS: Final = b"Access-Control-Allow-Headers: Content-Type, Authorization\r\n"
# A serialised origin (RFC 6454 §6.2): scheme "://" host [":" port]; nothing else is echoed.
_ORIGIN: Final = re.compile(r"[a-z][a-z0-9+.-]*://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_MAX_ORIGIN = 256
_LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
_METHOD_TOKEN: Final = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2


class CorsError(ValueError):
    """A CORS setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Origins allowed to read responses: `*` (any), `localhost` (pages served from this
    machine, any port), or exact origins such as `https://app.example`; and the methods
    and credentials a preflight allows."""

    origins: tuple[str, ...] = ("*",)
    methods: str = DEFAULT_METHODS
    credentials: bool = False
    # The whole fields when they are the same for every request (any origin, no credentials).
    fixed: bytes | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.origins:
            raise CorsError("--cors-origins lists no origin; give * for any")
        for origin in self.origins:
            if origin not in ("*", "localhost") and not _is_origin(origin):
                raise CorsError(f"--cors-origins: {origin!r} is not an origin such as https://app.example:8443 "
                                "(or * for any, localhost for pages served from this machine)")
        methods = [method.strip() for method in self.methods.split(",")]
        if not all(_METHOD_TOKEN.fullmatch(method) for method in methods):
            raise CorsError(f"--cors-methods: {self.methods!r} is not a comma-separated list of methods")
        any_origin = "*" in self.origins and not self.credentials
        object.__setattr__(self, "fixed", self._fields(b"*") if any_origin else None)

    @classmethod
    def parse(cls, origins: str, methods: str = DEFAULT_METHODS, credentials: bool = False) -> CorsPolicy:
        """The policy of llama-server's comma-separated `--cors-origins` and `--cors-methods`."""
        listed = tuple(origin.strip().rstrip("/").lower() for origin in origins.split(",") if origin.strip())
        return cls(listed, ", ".join(method.strip().upper() for method in methods.split(",")), credentials)

    def fields(self, origin: str | None) -> bytes:
        """The CORS header fields (CRLF-terminated) of a response to a request from `origin`
        (its Origin field; None when it has none)."""
        if self.fixed is not None:
            return self.fixed
        # The answer depends on the Origin, so caches must key on it (Fetch standard §3.2.5).
        allowed = self._allowed(origin)
        if allowed is None:
            return b"Vary: Origin\r\n"
        return self._fields(allowed.encode("ascii")) + b"Vary: Origin\r\n"

    def _allowed(self, origin: str | None) -> str | None:
        if origin is None or len(origin) > _MAX_ORIGIN:
            return None
        origin = origin.lower()
        if not _is_origin(origin):  # "null" (sandboxed pages, files) and anything odd: never echoed
            return None
        if "*" in self.origins or origin in self.origins:
            return origin
        if "localhost" in self.origins and urlsplit(origin).hostname in _LOCAL_HOSTS:
            return origin
        return None

    def _fields(self, origin: bytes) -> bytes:
        fields = [b"Access-Control-Allow-Origin: ", origin, b"\r\n",
                  b"Access-Control-Allow-Methods: ", self.methods.encode("ascii"), b"\r\n", _ALLOW_HEADERS]
        if self.credentials:
            fields.append(b"Access-Control-Allow-Credentials: true\r\n")
        return b"".join(fields)


def _is_origin(text: str) -> bool:
    return len(text) <= _MAX_ORIGIN and _ORIGIN.fullmatch(text) is not None


ANY_ORIGIN: Final = CorsPolicy()
