"""Which handler answers a request: exact paths or templates (`/slots/{id}`), per method, with 404/405/preflight."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import HTTPError
from .message import Request
from .response import EventStream, Response

Result: TypeAlias = Response | EventStream
Handler: TypeAlias = Callable[[Request], Result | Awaitable[Result]]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # RFC 9110 §5.6.2
_METHOD: Final = re.compile(_TOKEN)
# A browser lists the headers its real request will carry in
# Access-Control-Request-Headers; echoing them (when they are plain tokens)
# lets clients that add their own headers pass the preflight.
_HEADER_LIST: Final = re.compile(rf"{_TOKEN}(?:[ \t]*,[ \t]*{_TOKEN})*")
_PREFLIGHT_MAX_AGE: Final = (b"Access-Control-Max-Age", b"86400")
# A template's parameter: one whole path segment, `{name}`.
_PARAMETER: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Route:
    """A handler and how to call it: inline when plain, as a Task when ``async def``."""

    handler: Handler
    is_async: bool


def _preflight(request: Request) -> Response:
    """Answer a CORS preflight (an OPTIONS request) to any path with 204."""
    headers = [_PREFLIGHT_MAX_AGE]
    requested = request.headers.get("access-control-request-headers")
    if requested and _HEADER_LIST.fullmatch(requested):
        # A second Access-Control-Allow-Headers line: list fields combine
        # (RFC 9110 §5.3), and the Fetch standard reads them combined.
        headers.append((b"Access-Control-Allow-Headers", requested.encode("latin-1")))
    return Response(204, b"", b"", headers)


def _not_found(request: Request) -> Response:
    raise HTTPError(404, f"Invalid URL ({request.method} {request.path})")


_PREFLIGHT_ROUTE: Final = Route(_preflight, False)
_NOT_FOUND_ROUTE: Final = Route(_not_found, False)


class Router:
    """Maps (method, path) to a handler by exact match on the path (query ignored).

    A handler takes a ``Request`` and returns a ``Response`` or an
    ``EventStream``. A plain function is called inline by the connection (the
    fast path: no Task is created); an ``async def`` runs as a Task that is
    cancelled if the client disconnects. An unknown path gets 404, a known
    path with another method 405 with ``Allow``, and ``OPTIONS`` to any path
    without its own route a 204 CORS preflight.
    """

    __slots__ = ("_method_not_allowed", "_routes", "_templates")

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, Route]] = {}
        self._method_not_allowed: dict[str, Route] = {}
        # Paths with `{name}` segments, tried in order after the exact paths miss.
        self._templates: list[tuple[re.Pattern[str], str]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        """Route ``method`` requests for exactly ``path`` to ``handler``. A segment
        ``{name}`` matches any one non-empty segment, handed to the handler in
        ``request.path_params[name]`` (still percent-encoded)."""
        if _METHOD.fullmatch(method) is None:
            raise ValueError(f"invalid method {method!r}")
        if not path.startswith("/") or "?" in path:
            raise ValueError(f"a route path starts with / and has no query: {path!r}")
        if "{" in path and path not in self._routes:
            self._templates.append((_compile(path), path))
        methods = self._routes.setdefault(path, {})
        if method in methods:
            raise ValueError(f"{method} {path} already has a handler")
        methods[method] = Route(handler, inspect.iscoroutinefunction(handler))
        # RFC 9110 §15.5.6: a 405 lists the methods the resource supports.
        allowed = list(methods)
        if "OPTIONS" not in allowed:
            allowed.append("OPTIONS")
        allow = ", ".join(allowed)
        self._method_not_allowed[path] = Route(_refuse_method(allow), False)

    def resolve(self, method: str, path: str) -> Route:
        """The route for a request; never fails, unknown requests get an error route."""
        methods = self._routes.get(path)
        if methods is None and self._templates:
            return self._resolve_template(method, path)
        if methods is not None:
            # RFC 9110 §9.3.2: HEAD is GET without the body (which the protocol leaves out).
            route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if route is not None:
                return route
        if method == "OPTIONS":
            return _PREFLIGHT_ROUTE
        if methods is None:
            return _NOT_FOUND_ROUTE
        return self._method_not_allowed[path]


    def _resolve_template(self, method: str, path: str) -> Route:
        for pattern, template in self._templates:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            methods = self._routes[template]
            route = methods.get(method) or (methods.get("GET") if method == "HEAD" else None)
            if route is not None:
                return Route(_with_params(route.handler, match.groupdict()), route.is_async)
            return _PREFLIGHT_ROUTE if method == "OPTIONS" else self._method_not_allowed[template]
        return _PREFLIGHT_ROUTE if method == "OPTIONS" else _NOT_FOUND_ROUTE


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    for segment in template.split("/"):
        name = _PARAMETER.fullmatch(segment)
        if name is not None:
            parts.append(f"(?P<{name.group(1)}>[^/]+)")
        elif "{" in segment or "}" in segment:
            raise ValueError(f"a template parameter is a whole segment, {{name}}: {template!r}")
        else:
            parts.append(re.escape(segment))
    return re.compile("/".join(parts))


def _with_params(handler: Handler, params: dict[str, str]) -> Handler:
    def bound(request: Request) -> Result | Awaitable[Result]:
        request.path_params = params
        return handler(request)

    return bound


def _refuse_method(allow: str) -> Handler:
    allow_header = ((b"Allow", allow.encode("ascii")),)

    def method_not_allowed(request: Request) -> Response:
        raise HTTPError(
            405, f"Method {request.method} not allowed for {request.path}", headers=allow_header
        )

    return method_not_allowed
