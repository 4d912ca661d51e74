"""Tool calling on real instruct models, through the openai SDK.

Qwen2.5-Coder-0.5B-Instruct has a Jinja template with tools (Hermes
`<tool_call>` form); SmolLM2-135M-Instruct's ChatML template has none, so it
gets igllama's own tool prompt. Both come from PyPI wheels (tests/models.py).
Replies differ between CPUs, so the tests assert what holds for any reply:
a forced call is always valid (a grammar makes it so), calls parse, no
markup reaches the content, streamed calls equal whole ones.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from tests.api.conftest import ServerProcess, chat, error_of, sse_chunks

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                       "required": ["zone"]},
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris right now?"}]


@pytest.fixture(params=["qwen", "smollm"])
def any_model(request: pytest.FixtureRequest) -> ServerProcess:
    server: ServerProcess = request.getfixturevalue(request.param)
    return server


def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused")


def calls_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def test_required_always_gives_a_valid_call(any_model: ServerProcess) -> None:
    reply = client(any_model).chat.completions.create(
        model="m", messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required"  # type: ignore[list-item]
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    [(name, arguments)] = calls_of(choice.message)
    assert name in ("get_weather", "get_time")
    if name == "get_weather":
        assert isinstance(arguments["city"], str)
    else:
        assert arguments["zone"] in ("UTC", "CET")  # the schema's enum, enforced
    assert choice.message.tool_calls[0].id.startswith("call_")
    assert not choice.message.content


def test_a_named_function_is_the_one_called(any_model: ServerProcess) -> None:
    reply = client(any_model).chat.completions.create(
        model="m", messages=QUESTION, tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    [(name, arguments)] = calls_of(reply.choices[0].message)
    assert name == "get_time" and arguments["zone"] in ("UTC", "CET")


def test_auto_gives_a_clean_call_or_clean_text(any_model: ServerProcess) -> None:
    reply = client(any_model).chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER])  # type: ignore[list-item]
    choice = reply.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        [(name, arguments)] = calls_of(choice.message)
        assert name == "get_weather" and isinstance(arguments, dict)
    else:
        assert choice.message.content and "<tool_call>" not in choice.message.content


def test_qwen_calls_the_tool_when_it_may(qwen: ServerProcess) -> None:
    """The issue's request: llama-server returned no call for it; the model answers with one."""
    reply = client(qwen).chat.completions.create(model="m", messages=QUESTION, tools=[WEATHER])  # type: ignore[list-item]
    assert [name for name, _ in calls_of(reply.choices[0].message)] == ["get_weather"]


def test_none_offers_no_tools(any_model: ServerProcess) -> None:
    with_tools = chat(any_model.url, {"messages": QUESTION, "tools": [WEATHER], "max_tokens": 8}).json()
    without = chat(any_model.url, {"messages": QUESTION, "tools": [WEATHER], "tool_choice": "none",
                                   "max_tokens": 8}).json()
    assert without["choices"][0]["finish_reason"] != "tool_calls"
    assert "tool_calls" not in without["choices"][0]["message"]
    assert without["usage"]["prompt_tokens"] < with_tools["usage"]["prompt_tokens"]


def test_streamed_calls_equal_the_whole_replys(any_model: ServerProcess) -> None:
    body = {"messages": QUESTION, "tools": [WEATHER, TIME], "tool_choice": "required"}
    whole = chat(any_model.url, body).json()["choices"][0]["message"]["tool_calls"]
    chunks = sse_chunks(chat(any_model.url, {**body, "stream": True}).content)
    deltas = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    streamed: dict[int, dict[str, Any]] = {}
    for d in deltas:
        if d["index"] not in streamed:  # a call's first piece: its id, type and name
            assert d["id"].startswith("call_") and d["type"] == "function" and d["function"]["name"]
            streamed[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
        else:
            assert "name" not in d["function"] and "id" not in d
        streamed[d["index"]]["arguments"] += d["function"]["arguments"]
    assert [(s["name"], s["arguments"]) for _, s in sorted(streamed.items())] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in whole
    ]
    assert len(deltas) > 2, "the arguments came whole, not in pieces"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert all("<tool_call>" not in c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_a_tool_loop_goes_on_with_the_result(any_model: ServerProcess) -> None:
    sdk = client(any_model)
    first = sdk.chat.completions.create(
        model="m", messages=QUESTION, tools=[WEATHER], tool_choice="required"  # type: ignore[list-item]
    ).choices[0].message
    call = first.tool_calls[0]
    history = [*QUESTION, first.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18, "sky": "clear"})}]
    second = sdk.chat.completions.create(model="m", messages=history, tools=[WEATHER], max_tokens=32)  # type: ignore[arg-type, list-item]
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert second.usage is not None and second.usage.prompt_tokens > 0
    message = second.choices[0].message
    assert message.content or message.tool_calls


def test_parallel_tool_calls_false_keeps_one_call(qwen: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "Weather in Paris and in Oslo?"}], "tools": [WEATHER],
            "parallel_tool_calls": False}
    message = chat(qwen.url, body).json()["choices"][0]["message"]
    assert len(message.get("tool_calls", [])) <= 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": {"get_weather": {}}}, "tools"),
        ({"tools": [{"type": "function"}]}, "tools[0]"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": {"type": "strange"}}}}}], "tool_choice": "required"},
         "tools[0].function.parameters"),
        ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]},
         "messages[0].tool_calls[0].function.arguments"),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(qwen: ServerProcess, body: dict[str, Any], param: str) -> None:
    error = error_of(chat(qwen.url, {"messages": QUESTION, **body}), 400)
    assert error["param"] == param, error


def test_the_sdks_stream_helper_assembles_the_streamed_call(qwen: ServerProcess) -> None:
    sdk = client(qwen)
    with sdk.chat.completions.stream(
        model="m", messages=QUESTION, tools=[WEATHER], tool_choice="required",  # type: ignore[list-item]
    ) as stream:
        kinds = {type(event).__name__ for event in stream}
        final = stream.get_final_completion()
    assert "FunctionToolCallArgumentsDeltaEvent" in kinds
    [call] = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert final.choices[0].finish_reason == "tool_calls"


async def test_the_async_client_gets_a_streamed_call(qwen: ServerProcess) -> None:
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=qwen.base_url, api_key="unused")
    stream = await sdk.chat.completions.create(
        model="m", messages=QUESTION, tools=[WEATHER], tool_choice="required", stream=True,  # type: ignore[list-item]
    )
    names, arguments = [], ""
    async for chunk in stream:
        for piece in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if piece.function and piece.function.name:
                names.append(piece.function.name)
            arguments += piece.function.arguments or "" if piece.function else ""
    await sdk.close()
    assert names == ["get_weather"]
    assert isinstance(json.loads(arguments)["city"], str)
