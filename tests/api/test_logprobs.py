"""`logprobs` and `top_logprobs`, whole and streamed, as OpenAI's clients read them."""

from __future__ import annotations

import math
from typing import Any

from openai import OpenAI

from tests.api.conftest import NEVER_STOP, ServerProcess, chat, error_of, sse_chunks, user
from tests.conftest import late_stop_string

# Greedy and cold (no reuse of a cached prefix), so that two runs compute the very same logits.
ASK = user("Write a short poem about the sea.", 8, temperature=0, cache_prompt=False)


def check_entries(entries: list[dict[str, Any]], content: str, n_top: int) -> None:
    assert b"".join(bytes(entry["bytes"]) for entry in entries).decode() == content
    for entry in entries:
        assert entry["logprob"] <= 0.0
        assert entry["token"] == bytes(entry["bytes"]).decode("utf-8", errors="replace")
        top = entry["top_logprobs"]
        assert len(top) == n_top
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0 + 1e-6
        if top:  # greedy: the chosen token is the most likely one
            assert (top[0]["bytes"], top[0]["logprob"]) == (entry["bytes"], entry["logprob"])


def test_whole_reply_has_a_logprob_per_token(server: ServerProcess) -> None:
    body = chat(server.url, {**ASK, "logprobs": True, "top_logprobs": 3}).json()
    choice = body["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == body["usage"]["completion_tokens"] > 0
    check_entries(entries, choice["message"]["content"], 3)
    assert choice["logprobs"]["refusal"] is None


def test_streamed_logprobs_are_the_whole_replys(server: ServerProcess) -> None:
    whole = chat(server.url, {**ASK, "logprobs": True, "top_logprobs": 2}).json()["choices"][0]
    chunks = sse_chunks(chat(server.url, {**ASK, "logprobs": True, "top_logprobs": 2, "stream": True}).content)
    streamed = [e for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for e in c["choices"][0]["logprobs"]["content"]]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == whole["message"]["content"]
    check_entries(streamed, content, 2)
    expected = whole["logprobs"]["content"]
    assert [e["bytes"] for e in streamed] == [e["bytes"] for e in expected]
    assert all(math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4) for a, b in zip(streamed, expected))


def test_a_stop_strings_tokens_have_no_logprobs(server: ServerProcess) -> None:
    body = {**ASK, "max_tokens": 12, "logit_bias": NEVER_STOP, "logprobs": True}
    full = chat(server.url, body).json()["choices"][0]["message"]["content"]
    start, stop = late_stop_string(full)
    for streamed in (False, True):
        response = chat(server.url, {**body, "stop": [stop], "stream": streamed})
        if streamed:
            chunks = [c for c in sse_chunks(response.content) if c["choices"]]
            content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            entries = [e for c in chunks if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]
        else:
            choice = response.json()["choices"][0]
            content, entries = choice["message"]["content"], choice["logprobs"]["content"]
        assert content == full[:start]
        # Every token whose text shows has its entry, and no token of the stop string does.
        shown = b"".join(bytes(e["bytes"]) for e in entries)
        assert shown.startswith(content.encode())
        if entries:
            assert len(shown) - len(entries[-1]["bytes"]) < len(content.encode())  # the last entry's text shows
        else:
            assert content == ""


def test_without_logprobs_there_are_none(server: ServerProcess) -> None:
    choice = chat(server.url, ASK).json()["choices"][0]
    assert choice["logprobs"] is None
    chunks = sse_chunks(chat(server.url, {**ASK, "stream": True}).content)
    assert all(c["choices"][0]["logprobs"] is None for c in chunks if c["choices"])


def test_top_logprobs_alone_or_out_of_range_is_refused(server: ServerProcess) -> None:
    error = error_of(chat(server.url, {**ASK, "top_logprobs": 2}), 400)
    assert error["param"] == "top_logprobs" and "logprobs" in error["message"]
    error = error_of(chat(server.url, {**ASK, "logprobs": True, "top_logprobs": 21}), 400)
    assert error["param"] == "top_logprobs" and "20" in error["message"]
    assert error_of(chat(server.url, {**ASK, "logprobs": "yes"}), 400)["param"] == "logprobs"


def test_the_openai_sdk_reads_them(server: ServerProcess) -> None:
    client = OpenAI(base_url=server.base_url, api_key="unused")
    reply = client.chat.completions.create(
        model="default", messages=ASK["messages"], max_tokens=4, temperature=0, logprobs=True, top_logprobs=1
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content
    assert b"".join(bytes(entry.bytes or []) for entry in logprobs.content).decode() == reply.choices[0].message.content
    assert all(len(entry.top_logprobs) == 1 for entry in logprobs.content)
