"""`/v1/completions` and `/infill`: no chat template, text or token-id prompts,
fill-in-the-middle on Qwen2.5-Coder, through `requests` and the openai SDK."""

from __future__ import annotations

import json
from typing import Any

import requests
from openai import OpenAI

from tests.api.conftest import (
    NEVER_STOP,
    TIMEOUT,
    ServerProcess,
    error_of,
    sse_chunks,
    sse_payloads,
)

STORY = "Once upon a time, in a small village by the sea,"


def complete(url: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{url}/v1/completions", json=body, timeout=TIMEOUT)


def test_a_text_prompt_is_continued_in_openais_shape(server: ServerProcess) -> None:
    body = complete(server.url, {"prompt": STORY, "max_tokens": 8, "temperature": 0,
                                 "logit_bias": NEVER_STOP}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["text"]
    assert choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == 8 and body["usage"]["prompt_tokens"] > 5


def test_streamed_text_equals_the_whole_text(server: ServerProcess) -> None:
    body = {"prompt": STORY, "max_tokens": 10, "temperature": 0, "cache_prompt": False}
    whole = complete(server.url, body).json()["choices"][0]["text"]
    response = requests.post(f"{server.url}/v1/completions", json={**body, "stream": True,
                             "stream_options": {"include_usage": True}}, timeout=TIMEOUT)
    chunks = sse_chunks(response.content)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert response.content.rstrip().endswith(b"data: [DONE]")


def test_several_prompts_and_n_give_one_choice_each(server: ServerProcess) -> None:
    body = complete(server.url, {"prompt": [STORY, "The capital of France is"], "n": 2, "max_tokens": 3,
                                 "temperature": 0.8, "logit_bias": NEVER_STOP}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 12


def test_token_ids_echo_and_stop(server: ServerProcess) -> None:
    ids = requests.post(f"{server.url}/tokenize", json={"content": STORY}, timeout=TIMEOUT).json()["tokens"]
    by_ids = complete(server.url, {"prompt": ids, "max_tokens": 6, "temperature": 0, "echo": True}).json()
    assert by_ids["choices"][0]["text"].startswith(STORY)
    stopped = complete(server.url, {"prompt": STORY, "max_tokens": 30, "temperature": 0, "stop": [" the", ","]})
    text = stopped.json()["choices"][0]["text"]
    assert " the" not in text and "," not in text


def test_legacy_logprobs(server: ServerProcess) -> None:
    choice = complete(server.url, {"prompt": STORY, "max_tokens": 5, "temperature": 0, "logprobs": 2,
                                   "logit_bias": NEVER_STOP}).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"]) == len(logprobs["top_logprobs"]) == 5
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"]) and logprobs["text_offset"][0] == 0
    assert all(len(top) <= 2 and lp <= 0 for top, lp in zip(logprobs["top_logprobs"], logprobs["token_logprobs"]))


def test_the_openai_sdk_completes(server: ServerProcess) -> None:
    client = OpenAI(base_url=server.base_url, api_key="unused")
    reply = client.completions.create(model="m", prompt=STORY, max_tokens=5, temperature=0)
    assert reply.choices[0].text and reply.usage is not None
    pieces = [c.choices[0].text for c in client.completions.create(
        model="m", prompt=STORY, max_tokens=5, temperature=0, stream=True) if c.choices]
    assert "".join(pieces)


def test_bad_prompts_are_400_naming_the_field(server: ServerProcess) -> None:
    for body, param in [
        ({}, "prompt"), ({"prompt": [[]]}, "prompt"), ({"prompt": 5}, "prompt"),
        ({"prompt": [10**9]}, "prompt"), ({"prompt": "x", "suffix": 3}, "suffix"),
        ({"prompt": "x", "logprobs": 9}, "logprobs"), ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ]:
        error = error_of(complete(server.url, body), 400)
        assert error["param"] == param, (body, error)


def test_suffix_on_a_model_without_fim_tokens_is_refused(server: ServerProcess) -> None:
    error = error_of(complete(server.url, {"prompt": "def f():", "suffix": "\n"}), 400)
    assert error["param"] == "suffix" and "fill-in-the-middle" in error["message"]


PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\n\nprint(add(2, 3))\n"
# Greedy FIM replies differ between CPUs and under load, and Qwen2.5-Coder-Instruct,
# once the body is written, may go on with more functions ("def subtract(a, b):\n
# return a -") until max_tokens cuts it anywhere. So the middle is asked to stop
# where an editor would stop it, and must get there by itself, well inside the
# qwen server's cap of 64 tokens: the text it fills in is then whole, whatever it is.
END_OF_BLOCK = "\n\n"


def test_fill_in_the_middle_writes_a_function_body(qwen: ServerProcess) -> None:
    choice = complete(qwen.url, {"prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 64, "temperature": 0,
                                 "stop": [END_OF_BLOCK]}).json()["choices"][0]
    middle = choice["text"]
    assert choice["finish_reason"] == "stop", middle  # not cut by max_tokens
    assert "return" in middle
    compile(PREFIX + middle + SUFFIX, "<fim>", "exec")  # the filled file is Python


def test_llama_servers_infill_endpoint(qwen: ServerProcess) -> None:
    # With another file as context this instruct model follows the body with
    # markdown (a ``` fence, then prose) on the next line: the reply is asked
    # for one line, the body of a one-line function.
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 64, "temperature": 0, "cache_prompt": False,
            "stop": ["\n"], "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}]}
    reply = requests.post(f"{qwen.url}/infill", json=body, timeout=TIMEOUT).json()
    assert reply["stop"] is True and reply["stop_type"] != "limit", reply  # it ended by itself
    assert 1 <= reply["tokens_predicted"] < 64 and reply["tokens_evaluated"] > 20  # input_extra counts
    assert "return" in reply["content"]
    compile(PREFIX + reply["content"] + SUFFIX, "<infill>", "exec")
    # llama-server's own endpoints end a stream with the last object, without [DONE].
    streamed = [json.loads(p) for p in sse_payloads(requests.post(f"{qwen.url}/infill", json={**body, "stream": True},
                                                                  timeout=TIMEOUT).content)]
    assert [c["stop"] for c in streamed] == [False] * (len(streamed) - 1) + [True]
    assert streamed[-1]["stop_type"] == reply["stop_type"]
    assert "".join(c["content"] for c in streamed) == reply["content"]
