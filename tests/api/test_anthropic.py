"""Anthropic's Messages API through the official `anthropic` SDK, on the instruct models."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pytest
import requests

from tests.api.conftest import TIMEOUT, ServerProcess

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture
def claude(smollm: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=smollm.url, api_key="unused", max_retries=0) as client:
        yield client


@pytest.fixture
def qwen_claude(qwen: ServerProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=qwen.url, api_key="unused", max_retries=0) as client:
        yield client


def test_a_message_in_anthropics_shape(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="claude-local", max_tokens=24, messages=HELLO,
                                     system="You are terse.")
    assert message.type == "message" and message.role == "assistant" and message.model == "claude-local"
    assert message.id.startswith("msg_")
    [block] = message.content
    assert block.type == "text" and block.text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.output_tokens >= 1 and message.usage.input_tokens >= 1


def test_the_stream_helper_gives_the_same_message(claude: anthropic.Anthropic) -> None:
    # (This SDK takes temperature through extra_body; cache_prompt off gives both
    # the same prefill, so the greedy text is identical.)
    fresh = {"temperature": 0, "cache_prompt": False}
    whole = claude.messages.create(model="m", max_tokens=24, messages=HELLO, extra_body=fresh)
    with claude.messages.stream(model="m", max_tokens=24, messages=HELLO, extra_body=fresh) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_raw_events_come_in_anthropics_order(smollm: ServerProcess) -> None:
    body = {"model": "m", "max_tokens": 8, "messages": HELLO, "stream": True}
    text = requests.post(f"{smollm.url}/v1/messages", json=body, timeout=TIMEOUT).text
    names = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}


def test_a_stop_sequence_is_reported(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(model="m", max_tokens=40, messages=HELLO, stop_sequences=[" "])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == " "
    assert " " not in message.content[0].text


def test_count_tokens_counts_the_prompt(claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model="m", messages=HELLO, system="Be brief.")
    message = claude.messages.create(model="m", max_tokens=1, messages=HELLO, system="Be brief.")
    used = message.usage
    assert counted.input_tokens == used.input_tokens + (used.cache_read_input_tokens or 0)


def test_a_tool_use_loop(qwen_claude: anthropic.Anthropic) -> None:
    first = qwen_claude.messages.create(model="m", max_tokens=64, messages=QUESTION, tools=[WEATHER],
                                        tool_choice={"type": "any"})
    assert first.stop_reason == "tool_use"
    [use] = [block for block in first.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str) and use.id.startswith("toolu_")
    history = [*QUESTION, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                             "content": json.dumps({"temperature_c": 18})}]}]
    second = qwen_claude.messages.create(model="m", max_tokens=32, messages=history, tools=[WEATHER])
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) > \
        first.usage.input_tokens + (first.usage.cache_read_input_tokens or 0)


def test_a_streamed_tool_use_assembles(qwen_claude: anthropic.Anthropic) -> None:
    with qwen_claude.messages.stream(model="m", max_tokens=64, messages=QUESTION, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    [use] = [block for block in final.content if block.type == "tool_use"]
    assert isinstance(use.input["city"], str) and final.stop_reason == "tool_use"


def test_errors_are_anthropic_shaped(claude: anthropic.Anthropic, smollm: ServerProcess) -> None:
    response = requests.post(f"{smollm.url}/v1/messages", json={"model": "m", "messages": HELLO}, timeout=TIMEOUT)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=8, messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=8, messages=HELLO, tool_choice={"type": "tool", "name": "x"})
