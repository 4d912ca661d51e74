"""igllama: an OpenAI-compatible server for GGUF models, and a library to embed it.

    igllama.serve(model, port=8080, **settings)   # blocking, until SIGINT/SIGTERM
    igllama.Server(model, port=0, **settings)     # async: await start() / stop(), or async with
    igllama.load(model, **settings)               # the engine without HTTP: chat(), embed(), close()

The names below load llama.cpp on first use, so `import igllama` (and the
command line's `--help`) stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from igllama.version import __version__

__all__ = ["ChatStream", "Engine", "Finished", "Server", "TextDelta", "__version__", "load", "serve"]

if TYPE_CHECKING:
    from igllama.engine import Engine, Finished, TextDelta
    from igllama.engine.stream import ChatStream
    from igllama.library import Server, load
    from igllama.run import serve

_WHERE = {
    "Server": "igllama.library", "load": "igllama.library", "serve": "igllama.run",
    "Engine": "igllama.engine", "Finished": "igllama.engine", "TextDelta": "igllama.engine",
    "ChatStream": "igllama.engine.stream",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'igllama' has no attribute {name!r}")
