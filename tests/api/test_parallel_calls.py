"""Several calls in one reply, on the wire: `parallel_tool_calls`, indexes, ids, streamed pieces.

The small test models write one call per reply, so the HTTP tier is driven
here by a scripted engine that replays what the real engine emits for a
reply with two calls (tests/engine/test_tool_calls.py proves the parser
finds them in model text, whole and split at every character).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from igllama.api import AppSettings, create_app, error_body
from igllama.engine import CallDelta, EngineConfig, Finished, ModelConfig, TextDelta, ToolCall
from igllama.engine.pool import EnginePool
from igllama.http import Server
from tests.api.conftest import BackgroundLoop, chat, sse_chunks
from tests.api.test_tools import WEATHER

PARIS, OSLO = '{"city": "Paris"}', '{"city": "Oslo"}'
STREAMED = [  # both calls stream: name first, then the arguments in pieces
    TextDelta("", calls=(CallDelta(0, "get_weather", ""), CallDelta(0, "", '{"city": '))),
    TextDelta("", calls=(CallDelta(0, "", '"Paris"}'),)),
    TextDelta("", calls=(CallDelta(1, "get_weather", ""), CallDelta(1, "", OSLO))),
]
END = Finished("tool_calls", 20, 0, 30, 1.0, 2.0, (ToolCall("get_weather", PARIS), ToolCall("get_weather", OSLO)))


class ScriptedStream:
    def __init__(self, events: list[Any]) -> None:
        self._events = iter(events)

    def __aiter__(self) -> ScriptedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        pass


class ScriptedEngine:
    """What `App` uses of an `Engine`, replaying `events` for every choice."""

    model = SimpleNamespace(n_vocab=1000)
    config = EngineConfig(ModelConfig("scripted.gguf"))

    def __init__(self) -> None:
        self.events: list[Any] = []

    def health(self) -> None:
        return None

    async def submit_choices(self, request: Any, n: int) -> list[ScriptedStream]:
        return [ScriptedStream(self.events) for _ in range(n)]


@pytest.fixture(scope="module")
def scripted(background_loop: BackgroundLoop) -> Iterator[tuple[str, ScriptedEngine]]:
    engine = ScriptedEngine()
    app = create_app(AppSettings("scripted"))
    app.set_pool(EnginePool.of("scripted", engine))  # type: ignore[arg-type]
    server = background_loop.run(Server.start(app.router, "127.0.0.1", 0, error_body=error_body))
    yield f"http://127.0.0.1:{server.port}", engine
    background_loop.run(server.close(1.0))


BODY = {"messages": [{"role": "user", "content": "Weather in Paris and Oslo?"}], "tools": [WEATHER]}


@pytest.mark.parametrize("events", [[*STREAMED, END], [END]], ids=["streamed", "found-at-the-end"])
def test_both_calls_come_back_with_their_own_ids(scripted: tuple[str, ScriptedEngine], events: list[Any]) -> None:
    url, engine = scripted
    engine.events = events
    choice = chat(url, BODY).json()["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", PARIS), ("get_weather", OSLO)]
    assert len({c["id"] for c in calls}) == 2 and choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None


@pytest.mark.parametrize("events", [[*STREAMED, END], [END]], ids=["streamed", "found-at-the-end"])
@pytest.mark.parametrize("parallel", [True, False])
def test_streamed_calls_reassemble_by_index(scripted: tuple[str, ScriptedEngine], events: list[Any],
                                            parallel: bool) -> None:
    url, engine = scripted
    engine.events = events
    chunks = sse_chunks(chat(url, {**BODY, "stream": True, "parallel_tool_calls": parallel}).content)
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for piece in chunk["choices"][0]["delta"].get("tool_calls") or []:
            if piece["index"] not in calls:
                assert piece["id"].startswith("call_") and piece["type"] == "function"
                calls[piece["index"]] = {"name": piece["function"]["name"], "arguments": ""}
            calls[piece["index"]]["arguments"] += piece["function"]["arguments"]
    expected = [("get_weather", PARIS), ("get_weather", OSLO)][: 2 if parallel else 1]
    assert [(c["name"], json.dumps(json.loads(c["arguments"]))) for _, c in sorted(calls.items())] == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_parallel_tool_calls_false_keeps_the_first_call(scripted: tuple[str, ScriptedEngine]) -> None:
    url, engine = scripted
    engine.events = [*STREAMED, END]
    calls = chat(url, {**BODY, "parallel_tool_calls": False}).json()["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == [PARIS]
