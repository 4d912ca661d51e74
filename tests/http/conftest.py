"""Run the HTTP tests on uvloop, the loop the server runs on in production."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import uvloop


@pytest.hookimpl(optionalhook=True)
def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Callable[[], Any]]:
    # Only pytest-asyncio >= 1.3 knows this hook; older versions use asyncio's loop.
    return {"uvloop": uvloop.new_event_loop}
