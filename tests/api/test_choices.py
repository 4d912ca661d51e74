"""`n` choices of one prompt, through the openai SDK and over raw SSE.

The choices are sampled independently from one prefill (the engine tests and
tests/engine/test_bookkeeping.py show the prompt is decoded once); here what
a client sees: n indexed choices, whole and streamed, `usage` counting the
prompt once and every choice's tokens, and more choices than slots still all
answered.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from openai import OpenAI

from tests.api.conftest import NEVER_STOP, ServerProcess, chat, sse_chunks, user
from tests.api.test_tools import QUESTION, WEATHER


def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused")


def test_three_choices_whole(smollm: ServerProcess) -> None:
    reply = client(smollm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Name a colour."}], n=3, temperature=1.0, seed=7,
        max_tokens=24,
    )
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices)
    assert all(c.message.content for c in reply.choices)
    # Sampled apart (seed, seed + 1, seed + 2): not three copies of one reply.
    assert len({c.message.content for c in reply.choices}) > 1
    one = client(smollm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=1,
    )
    assert reply.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt is counted once
    assert reply.usage.completion_tokens >= 3


def test_usage_sums_every_choices_tokens(server: ServerProcess) -> None:
    body = chat(server.url, user("Once upon a time", 6, n=4, temperature=0.9, logit_bias=NEVER_STOP)).json()
    assert [c["finish_reason"] for c in body["choices"]] == ["length"] * 4
    assert body["usage"]["completion_tokens"] == 4 * 6
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 24


def test_three_choices_streamed_reassemble(smollm: ServerProcess) -> None:
    stream = client(smollm).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Say hello."}], n=3, temperature=0.8, seed=3,
        max_tokens=16, stream=True, stream_options={"include_usage": True},
    )
    texts: dict[int, str] = defaultdict(str)
    roles: dict[int, str] = {}
    finish: dict[int, str] = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles[c.index] = c.delta.role
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                assert c.index not in finish, "a choice finished twice"
                finish[c.index] = c.finish_reason
    assert roles == {0: "assistant", 1: "assistant", 2: "assistant"}
    assert sorted(finish) == [0, 1, 2] and all(texts[i] for i in range(3))
    assert usage is not None and usage.completion_tokens >= 3


def test_more_choices_than_slots_all_come_back(smollm: ServerProcess) -> None:
    """The instruct servers have 2 slots: 5 choices wait their turn like any request."""
    body = chat(smollm.url, {**user("Count to three.", 8), "n": 5, "temperature": 0.7}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3, 4]
    assert all(c["message"]["content"] for c in body["choices"])


def test_each_choice_carries_its_own_tool_call(qwen: ServerProcess) -> None:
    reply = client(qwen).chat.completions.create(
        model="m", messages=QUESTION, tools=[WEATHER], tool_choice="required", n=2,  # type: ignore[list-item]
        temperature=0.7, seed=1,
    )
    assert len(reply.choices) == 2
    ids = set()
    for c in reply.choices:
        assert c.finish_reason == "tool_calls"
        [call] = c.message.tool_calls
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)
        ids.add(call.id)
    assert len(ids) == 2


def test_streamed_choices_carry_their_tool_calls(qwen: ServerProcess) -> None:
    chunks: list[dict[str, Any]] = sse_chunks(chat(qwen.url, {
        "messages": QUESTION, "tools": [WEATHER], "tool_choice": "required", "n": 2, "stream": True,
    }).content)
    calls: dict[int, list[str]] = defaultdict(list)
    for chunk in chunks:
        for c in chunk["choices"]:
            for call in c["delta"].get("tool_calls") or []:
                if call.get("function", {}).get("name"):
                    calls[c["index"]].append(call["function"]["name"])
            assert c["delta"].get("content") in (None, ""), "call markup leaked into the content"
    assert calls == {0: ["get_weather"], 1: ["get_weather"]}
