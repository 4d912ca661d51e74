"""`GET /`: the chat page for a browser, Ollama's "Ollama is running" for everyone else.

The page (`static/chat.html`) is one self-contained file: inline CSS and
JavaScript, no build step, nothing fetched from elsewhere. It talks to the
API like any other client (`/v1/models`, streamed `/v1/chat/completions`),
so it needs no key to load; the calls it makes do, and it asks for one.
`?api=URL` points it at a server on another origin, but only once the user
accepts that origin on the page: a link cannot send a user's messages or
key elsewhere by itself.

Ollama's clients probe `GET /` and `HEAD /` with no Accept field, and curl
sends `Accept: */*`: both keep getting Ollama's plain answer. Only a request
that names `text/html` (every browser's navigation does) gets the page.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Final

from igllama.api.ollama import RUNNING
from igllama.http import Request, Response

if TYPE_CHECKING:
    from igllama.api.app import App

# Read once, at import: a missing file is a packaging error that should stop
# the server at start, not be found by the first browser.
PAGE: Final = Response(
    200,
    resources.files("igllama.api").joinpath("static", "chat.html").read_bytes(),
    b"text/html; charset=utf-8",
    # no-cache: browsers may keep it, but revalidate, so an upgraded server's page is seen.
    # Vary: the same URL answers differently by Accept (RFC 9110 §12.5.5), so caches must key on it.
    ((b"Cache-Control", b"no-cache"), (b"Vary", b"Accept")),
)


def routes(app: App) -> None:
    # (HEAD / too: the router serves HEAD from GET, without the body)
    app.router.add("GET", "/", root if app.settings.ui else no_page)


def no_page(request: Request) -> Response:
    """--no-ui: no chat page; every caller gets Ollama's answer."""
    return RUNNING


def root(request: Request) -> Response:
    """Plain function, so the HTTP layer answers inline: Ollama's probes are polled."""
    return PAGE if wants_html(request.headers.get("accept")) else RUNNING


def wants_html(accept: str | None) -> bool:
    """Whether an Accept field names `text/html` with a non-zero weight (RFC 9110 §12.5.1).

    Wildcards (`*/*`, `text/*`) do not count: they are what non-browser
    clients send, and those expect Ollama's answer.
    """
    if not accept:
        return False
    for element in accept.split(","):
        media_range, *parameters = element.split(";")
        if media_range.strip().lower() != "text/html":
            continue
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    return float(value.strip()) > 0
                except ValueError:
                    return False  # a malformed weight: not a request for the page
        return True
    return False
