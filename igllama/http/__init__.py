"""igllama's HTTP/1.1 server: bytes, headers, bodies, SSE frames and CORS; nothing about chat.

A sans-IO parser (``parser``) turns bytes into requests; one asyncio
protocol per connection (``protocol``) dispatches them through a ``Router``
to handlers returning a ``Response`` or an ``EventStream``; ``Server``
listens (over TLS with a ``tls_context``) and stops gracefully.
"""

from .cors import CorsError, CorsPolicy
from .errors import HTTPError, ListenError, ParseError, default_error_body
from .limits import Limits
from .message import Headers, Request
from .response import NDJSON, SSE, EventStream, Response
from .router import Handler, Router
from .server import Server, run_until_signal, serve, wait_for_signal
from .tls import TLSError, tls_context

__all__ = [
    "NDJSON",
    "SSE",
    "CorsError",
    "CorsPolicy",
    "EventStream",
    "HTTPError",
    "Handler",
    "Headers",
    "Limits",
    "ListenError",
    "ParseError",
    "Request",
    "Response",
    "Router",
    "Server",
    "TLSError",
    "default_error_body",
    "run_until_signal",
    "serve",
    "tls_context",
    "wait_for_signal",
]
