"""Route llama.cpp's log into Python `logging`.

Until `llama_log_set` is called, `import llama_cpp` prints everything to
stderr. Here each line goes to the `igllama.llama` logger at its own level,
so it is quiet unless the CLI turns verbose logging on. The last error line is
kept so that a failed load can say why in one line.
"""

from __future__ import annotations

import ctypes
import logging
import threading

import llama_cpp.llama_cpp as llama

logger = logging.getLogger("igllama.llama")

# ggml_log_level: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation of
# the previous message (llama_cpp/_logger.py carries a stale mapping).
_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_CONTINUATION = 5

_lock = threading.Lock()
_partial: list[str] = []
_partial_level = logging.INFO
_last_error: str | None = None
_callback: object | None = None  # kept alive for as long as llama.cpp may call it


def _on_log(level: int, text: bytes | None, _user_data: ctypes.c_void_p) -> None:
    global _partial_level
    message = text.decode("utf-8", errors="replace") if text else ""
    with _lock:
        if level != _CONTINUATION:
            _partial_level = _LEVELS.get(level, logging.INFO)
        _partial.append(message)
        if not message.endswith("\n"):
            return  # llama.cpp writes some lines in pieces
        line = "".join(_partial).rstrip()
        _partial.clear()
        log_level = _partial_level
    if line:
        _emit(log_level, line)


def _emit(level: int, line: str) -> None:
    global _last_error
    if level >= logging.ERROR:
        _last_error = line.split(": ", 1)[-1] if line.startswith("llama_") else line
    logger.log(level, "%s", line)


def install() -> None:
    """Send llama.cpp's log to `logging` (idempotent)."""
    global _callback
    if _callback is None:
        _callback = llama.llama_log_callback(_on_log)
        llama.llama_log_set(_callback, ctypes.c_void_p(0))


def forget_last_error() -> None:
    global _last_error
    _last_error = None


def last_error() -> str | None:
    """The last error line llama.cpp logged since `forget_last_error`."""
    return _last_error
