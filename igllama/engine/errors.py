"""What can go wrong in the engine, as types the API can answer by.

The engine never knows HTTP statuses; it says what kind of failure a request
met, and `api` turns each kind into its status (input 400, capacity and
unavailability 503 with Retry-After, failure 500).
"""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports for a request."""


class InputError(EngineError, ValueError):
    """The request itself cannot be served (a prompt too long, a template that refuses it)."""


class GrammarError(InputError):
    """A GBNF grammar that llama.cpp cannot compile."""

    param = "grammar"


class CapacityError(EngineError):
    """No room right now (the queue is full, the KV pool cannot hold the request): retry later."""


class EngineUnavailable(EngineError):
    """The engine is not serving: it stopped, stalled, or the server is shutting down."""


class ShuttingDown(EngineUnavailable):
    """The server is stopping and ended this request at the end of its drain."""


class EngineFailure(EngineError):
    """An internal failure ended this request; the engine keeps serving others."""


class ModelNotFound(EngineError):
    """The request names a model the server does not offer; `names` are those it does."""

    def __init__(self, requested: str, names: list[str]) -> None:
        super().__init__(f"model {requested!r} is not served here; the models are: {', '.join(names)}")
        self.requested = requested
        self.names = names


class ModelLoadFailed(EngineError):
    """The requested model could not be loaded (a broken file, too little memory); others still serve."""
