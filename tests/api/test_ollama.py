"""Ollama's native API through the official `ollama` client, and its probes over raw HTTP."""

from __future__ import annotations

import json
from typing import Any

import ollama
import pytest
import requests

from tests.api.conftest import TIMEOUT, ServerProcess

HELLO = [{"role": "user", "content": "Say hello in one short sentence."}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_the_probes_answer_as_ollama_does(server: ServerProcess) -> None:
    root = requests.get(server.url, timeout=TIMEOUT)
    assert root.status_code == 200 and root.text == "Ollama is running"
    head = requests.head(server.url, timeout=TIMEOUT)
    assert head.status_code == 200 and head.content == b""
    assert requests.get(f"{server.url}/api/version", timeout=TIMEOUT).json()["version"]


def test_list_show_and_ps(server: ServerProcess) -> None:
    sdk = client(server)
    [model] = sdk.list().models
    assert model.model and model.size > 1_000_000 and model.details.format == "gguf"
    shown = sdk.show(model.model)
    assert "completion" in shown.capabilities and shown.details.family
    assert shown.modelinfo[f"{shown.details.family}.context_length"] > 0
    [loaded] = sdk.ps().models
    assert loaded.model == model.model


def test_chat_whole_and_streamed_agree(smollm: ServerProcess) -> None:
    sdk = client(smollm)
    options = {"temperature": 0, "num_predict": 24}
    sdk.chat(model="smollm", messages=HELLO, options=options, stream=False)  # the prompt is then cached
    # Both below are served from the prefix cache the same way, so greedy text is identical.
    whole = sdk.chat(model="smollm", messages=HELLO, options=options, stream=False)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.content
    assert whole.eval_count >= 1 and whole.prompt_eval_count > 5 and whole.total_duration > 0
    parts = list(sdk.chat(model="smollm", messages=HELLO, options=options, stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count


def test_raw_ndjson_framing(smollm: ServerProcess) -> None:
    body = {"model": "m", "messages": HELLO, "options": {"num_predict": 6}}
    response = requests.post(f"{smollm.url}/api/chat", json=body, timeout=TIMEOUT)
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] >= 1
    assert all(line["done"] is False and line["message"]["role"] == "assistant" for line in lines[:-1])


def test_generate_with_system_raw_and_options(server: ServerProcess) -> None:
    sdk = client(server)
    reply = sdk.generate(model="m", prompt="Once upon a time", options={"num_predict": 5, "stop": ["\n"]})
    assert reply.done and "\n" not in reply.response
    raw = sdk.generate(model="m", prompt="Once upon a time", raw=True, options={"num_predict": 4, "seed": 1})
    assert raw.done and raw.prompt_eval_count < reply.prompt_eval_count  # no chat template around it
    loaded = sdk.generate(model="m", prompt="")
    assert loaded.done and loaded.done_reason == "load"


def test_format_json_gives_json(smollm: ServerProcess) -> None:
    reply = client(smollm).chat(model="m", messages=[{"role": "user", "content": "A person as JSON."}],
                                format={"type": "object", "properties": {"name": {"type": "string"}},
                                        "required": ["name"]},
                                options={"num_predict": 120, "temperature": 0}, stream=False)
    assert reply.done_reason == "stop", reply.message.content  # the grammar closes the object
    assert isinstance(json.loads(reply.message.content)["name"], str)


def test_tools_loop(qwen: ServerProcess) -> None:
    sdk = client(qwen)
    question = [{"role": "user", "content": "What is the weather in Paris right now?"}]
    first = sdk.chat(model="m", messages=question, tools=[WEATHER], stream=False)
    [call] = first.message.tool_calls
    assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    history: list[Any] = [*question, first.message,
                          {"role": "tool", "content": json.dumps({"temperature_c": 18}), "tool_name": "get_weather"}]
    second = sdk.chat(model="m", messages=history, tools=[WEATHER], stream=False, options={"num_predict": 32})
    assert second.done and second.prompt_eval_count > first.prompt_eval_count


def test_fill_in_the_middle_with_suffix(qwen: ServerProcess) -> None:
    reply = client(qwen).generate(model="m", prompt="def add(a, b):\n    ", suffix="\n\n\nprint(add(2, 3))\n",
                                  options={"temperature": 0, "num_predict": 24})
    assert "return" in reply.response


def test_embeddings_both_forms(server: ServerProcess) -> None:
    sdk = client(server)
    result = sdk.embed(model="m", input=["Hello", "World"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 640
    old = requests.post(f"{server.url}/api/embeddings", json={"model": "m", "prompt": "Hello"}, timeout=TIMEOUT)
    assert old.json()["embedding"] == pytest.approx(result.embeddings[0], abs=1e-5)


def test_errors_are_ollama_shaped(server: ServerProcess) -> None:
    response = requests.post(f"{server.url}/api/chat", json={"model": "m", "messages": "hi"}, timeout=TIMEOUT)
    assert response.status_code == 400 and set(response.json()) == {"error"}
    with pytest.raises(ollama.ResponseError) as refused:
        client(server).chat(model="m", messages=HELLO, options={"temperature": "hot"})
    assert refused.value.status_code == 400 and "temperature" in refused.value.error
