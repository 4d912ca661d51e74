"""OpenAI's Responses API through the official SDK: create, stream, tools, structured text, the store."""

from __future__ import annotations

import json

import openai
import pytest
import requests
from openai import OpenAI
from pydantic import BaseModel

from tests.api.conftest import TIMEOUT, ServerProcess

WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="unused", max_retries=0)


def test_create_gives_a_response_object(smollm: ServerProcess) -> None:
    response = client(smollm).responses.create(model="m", input="Say hello.", instructions="Be brief.",
                                               max_output_tokens=24)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete") and response.output_text
    assert response.output[0].type == "message" and response.output[0].content[0].type == "output_text"
    assert response.usage.input_tokens > 5 and response.usage.output_tokens >= 1
    assert response.instructions == "Be brief."


def test_stream_and_final_response_agree(smollm: ServerProcess) -> None:
    sdk = client(smollm)
    fresh = {"cache_prompt": False}
    whole = sdk.responses.create(model="m", input="Name a fruit.", temperature=0, max_output_tokens=64,
                                 extra_body=fresh)
    with sdk.responses.stream(model="m", input="Name a fruit.", temperature=0, max_output_tokens=64,
                              extra_body=fresh) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and "response.output_item.done" in kinds
    assert final.output_text == whole.output_text


def test_previous_response_id_continues_the_conversation(smollm: ServerProcess) -> None:
    sdk = client(smollm)
    first = sdk.responses.create(model="m", input="My name is Ada.", max_output_tokens=16)
    second = sdk.responses.create(model="m", input="What is my name?", previous_response_id=first.id,
                                  max_output_tokens=16)
    alone = sdk.responses.create(model="m", input="What is my name?", max_output_tokens=16)
    # The second prompt holds the first exchange: more input tokens than the question alone.
    assert second.usage.input_tokens > alone.usage.input_tokens + 5
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.responses.create(model="m", input="Hi", previous_response_id="resp_nope")
    assert missing.value.body["param"] == "previous_response_id"
    unstored = sdk.responses.create(model="m", input="Hi", store=False, max_output_tokens=2)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(model="m", input="Again", previous_response_id=unstored.id)


def test_a_function_call_and_its_output(qwen: ServerProcess) -> None:
    sdk = client(qwen)
    first = sdk.responses.create(model="m", input="What is the weather in Paris right now?", tools=[WEATHER],
                                 tool_choice="required")
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    second = sdk.responses.create(model="m", previous_response_id=first.id, tools=[WEATHER], max_output_tokens=32,
                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                          "output": json.dumps({"temperature_c": 18})}])
    assert second.status in ("completed", "incomplete")
    assert second.usage.input_tokens > first.usage.input_tokens


def test_a_streamed_function_call(qwen: ServerProcess) -> None:
    with client(qwen).responses.stream(model="m", input="What is the weather in Paris right now?",
                                       tools=[WEATHER], tool_choice="required") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert isinstance(json.loads(call.arguments)["city"], str)


class City(BaseModel):
    name: str
    country: str


def test_parse_with_a_text_format(qwen: ServerProcess) -> None:
    response = client(qwen).responses.parse(model="m", input="Name a city in Italy.", text_format=City,
                                            max_output_tokens=60)
    assert isinstance(response.output_parsed, City)


def test_bad_input_is_an_openai_error(smollm: ServerProcess) -> None:
    reply = requests.post(f"{smollm.url}/v1/responses", json={"model": "m", "input": 5}, timeout=TIMEOUT)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input"


def test_a_reply_cut_by_max_output_tokens_is_incomplete(server: ServerProcess) -> None:
    body = {"model": "m", "input": "Tell a long story.", "max_output_tokens": 3}
    whole = requests.post(f"{server.url}/v1/responses", json=body, timeout=TIMEOUT).json()
    assert whole["status"] == "incomplete" and whole["incomplete_details"] == {"reason": "max_output_tokens"}
    text = requests.post(f"{server.url}/v1/responses", json={**body, "stream": True}, timeout=TIMEOUT).text
    events = [line[len("event: "):] for line in text.splitlines() if line.startswith("event: ")]
    assert events[-1] == "response.incomplete"
    numbers = [json.loads(line[len("data: "):])["sequence_number"] for line in text.splitlines()
               if line.startswith("data: ")]
    assert numbers == list(range(len(numbers)))
