"""/v1/chat/completions over real sockets: shapes, streaming frames, and the request fields."""

from __future__ import annotations

import orjson
import requests

from tests.api.conftest import (
    MAX_TOKENS_CAP,
    NEVER_STOP,
    TIMEOUT,
    ServerProcess,
    assert_cors,
    chat,
    error_of,
    sse_chunks,
    sse_payloads,
    user,
)
from tests.conftest import late_stop_string

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def test_completion_has_the_openai_shape(server: ServerProcess) -> None:
    # End-of-generation banned: a reply that ended at once would have no content on any machine.
    response = chat(server.url, user("Say hello.", 6, logit_bias=NEVER_STOP))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == MODEL_FILE  # no model in the request: the server's id
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_stream_is_exactly_role_content_finish_done(server: ServerProcess) -> None:
    response = chat(server.url, user("Tell me about cats.", 6, stream=True, logit_bias=NEVER_STOP), stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert_cors(response)
    chunks = sse_chunks(response.content)

    first, *content, last = chunks
    assert first["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]
    assert content, "no content chunk between the role chunk and the finish chunk"
    for chunk in content:
        [choice] = chunk["choices"]
        assert list(choice["delta"]) == ["content"] and choice["delta"]["content"]
        assert choice["finish_reason"] is None
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]
    # One completion: every chunk carries the same envelope.
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert (chunk["id"], chunk["created"], chunk["model"]) == (first["id"], first["created"], MODEL_FILE)
        assert "usage" not in chunk
    assert first["id"].startswith("chatcmpl-")


def test_streamed_text_equals_the_non_streamed_text(server: ServerProcess) -> None:
    # Greedy and without the prefix cache, both runs compute the same tokens.
    body = user("Name three colours.", 12, temperature=0, cache_prompt=False)
    whole = chat(server.url, body).json()
    streamed = sse_chunks(chat(server.url, {**body, "stream": True}).content)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed)
    assert text == whole["choices"][0]["message"]["content"]
    assert streamed[-1]["choices"][0]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_include_usage_adds_one_usage_chunk_before_done(server: ServerProcess) -> None:
    body = user("Hi", 4, stream=True, stream_options={"include_usage": True}, logit_bias=NEVER_STOP)
    payloads = sse_payloads(chat(server.url, body).content)
    assert payloads[-1] == b"[DONE]"
    *chunks, usage_chunk = [orjson.loads(p) for p in payloads[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["id"] == chunks[0]["id"]
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + 4


def test_include_usage_false_sends_no_usage_chunk(server: ServerProcess) -> None:
    body = user("Hi", 2, stream=True, stream_options={"include_usage": False})
    chunks = sse_chunks(chat(server.url, body).content)
    assert all(c["choices"] and "usage" not in c for c in chunks)


def test_max_tokens_is_capped_by_the_server_flag(server: ServerProcess) -> None:
    body = chat(server.url, user("Write a long essay about the sea.", 1000, logit_bias=NEVER_STOP)).json()
    assert body["usage"]["completion_tokens"] == MAX_TOKENS_CAP
    assert body["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_is_honoured(server: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 3, "logit_bias": NEVER_STOP}
    reply = chat(server.url, body).json()
    assert reply["usage"]["completion_tokens"] == 3
    assert reply["choices"][0]["finish_reason"] == "length"


def test_stop_string_ends_the_reply_before_it(server: ServerProcess) -> None:
    body = user("Count from 1 to 20.", 16, temperature=0, cache_prompt=False, logit_bias=NEVER_STOP)
    full = chat(server.url, body).json()["choices"][0]["message"]["content"]
    assert full
    # The stop string comes from this machine's greedy reply, where it first
    # appears as late as possible: the same run with it must end just before it.
    start, stop = late_stop_string(full)
    stopped = chat(server.url, {**body, "stop": ["never-appears", stop]}).json()
    assert stopped["choices"][0]["message"]["content"] == full[:start]
    assert stop not in stopped["choices"][0]["message"]["content"]
    assert stopped["choices"][0]["finish_reason"] == "stop"

    streamed = sse_chunks(chat(server.url, {**body, "stop": stop, "stream": True}).content)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in streamed)
    assert text == full[:start] and stop not in text
    assert streamed[-1]["choices"][0]["finish_reason"] == "stop"


def test_model_is_echoed(server: ServerProcess) -> None:
    body = chat(server.url, user("Hi", 1, model="my-own-name")).json()
    assert body["model"] == "my-own-name"
    chunks = sse_chunks(chat(server.url, user("Hi", 1, model="my-own-name", stream=True)).content)
    assert {c["model"] for c in chunks} == {"my-own-name"}


def test_content_as_text_parts_is_the_same_prompt_as_a_string(server: ServerProcess) -> None:
    parts = [{"type": "text", "text": "What is the capital"}, {"type": "text", "text": " of France?"}]
    as_parts = chat(server.url, {"messages": [{"role": "user", "content": parts}], "max_tokens": 1})
    as_string = chat(server.url, user("What is the capital of France?", 1))
    assert as_parts.status_code == 200, as_parts.text
    assert as_parts.json()["usage"]["prompt_tokens"] == as_string.json()["usage"]["prompt_tokens"]


def test_system_and_multi_turn_messages(server: ServerProcess) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye"},
    ]
    response = chat(server.url, {"messages": messages, "max_tokens": 2})
    assert response.status_code == 200, response.text
    single = chat(server.url, user("Bye", 2)).json()
    assert response.json()["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"]


def test_enable_thinking_false_is_accepted(server: ServerProcess) -> None:
    response = chat(server.url, user("Hi", 2, chat_template_kwargs={"enable_thinking": False}))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def test_no_think_adds_no_think_tags_to_a_model_that_does_not_think(server: ServerProcess) -> None:
    # The specification: --no-think "has no effect on models that don't produce thinking blocks".
    body = user("Hello", 8, temperature=0, chat_template_kwargs={"enable_thinking": False})
    content = chat(server.url, body).json()["choices"][0]["message"]["content"]
    assert "<think>" not in content and "</think>" not in content


def test_n_1_is_accepted(server: ServerProcess) -> None:
    response = chat(server.url, user("Hi", 1, n=1))
    assert response.status_code == 200
    assert len(response.json()["choices"]) == 1


def test_n_beyond_openais_bound_is_refused(server: ServerProcess) -> None:
    error = error_of(chat(server.url, user("Hi", 1, n=129)), 400)
    assert error["param"] == "n" and "n must be at most 128" in error["message"]


def test_keep_alive_connection_serves_several_requests(server: ServerProcess) -> None:
    with requests.Session() as session:
        for _ in range(3):
            reply = session.post(f"{server.url}/v1/chat/completions", json=user("Hi", 1), timeout=TIMEOUT)
            assert reply.status_code == 200
        models = session.get(f"{server.url}/v1/models", timeout=TIMEOUT)
        assert models.json()["data"][0]["id"] == MODEL_FILE
