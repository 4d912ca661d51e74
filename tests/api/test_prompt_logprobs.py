"""A prompt's own log-probabilities: `echo` + `logprobs` (with `max_tokens` 0), vLLM's
`prompt_logprobs`, checked against an independent log-softmax over llama.cpp's logits."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import requests

from tests.api.conftest import (
    NEVER_STOP,
    TIMEOUT,
    Reference,
    ServerProcess,
    chat,
    error_of,
    sse_chunks,
    user,
)

PROMPTS = [
    "The capital of France is Paris.",
    "Water boils at 100 degrees Celsius at sea level.",
    "def add(a, b):\n    return a + b\n",
]
TOLERANCE = 1e-3  # nats

def complete(server: ServerProcess, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}/v1/completions", json=body, timeout=TIMEOUT)


def token_ids(server: ServerProcess, text: str) -> list[int]:
    """The prompt's tokens as the completions endpoint makes them (BOS added)."""
    response = requests.post(f"{server.url}/tokenize", json={"content": text, "add_special": True}, timeout=TIMEOUT)
    return list(response.json()["tokens"])


def check_against_reference(logprobs: dict[str, Any], tokens: list[int], reference: Reference, n_top: int) -> None:
    rows = reference(tokens)
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    for i in range(1, len(tokens)):
        expected = rows[i - 1, tokens[i]]
        assert abs(logprobs["token_logprobs"][i] - expected) < TOLERANCE, (i, logprobs["token_logprobs"][i], expected)
        top = logprobs["top_logprobs"][i]
        assert len(top) == n_top
        best = np.sort(rows[i - 1])[::-1][:n_top]
        assert np.allclose(sorted(top.values(), reverse=True), best, atol=TOLERANCE)


def test_echoed_prompts_logprobs_match_an_independent_log_softmax(scoring_server: ServerProcess,
                                                                   reference: Reference) -> None:
    body = complete(scoring_server, {"prompt": PROMPTS, "echo": True, "logprobs": 3, "max_tokens": 0})
    assert body.status_code == 200, body.text
    reply = body.json()
    assert reply["usage"]["completion_tokens"] == 0
    for choice, prompt in zip(reply["choices"], PROMPTS, strict=True):
        tokens = token_ids(scoring_server, prompt)
        logprobs = choice["logprobs"]
        assert choice["text"] == prompt and choice["finish_reason"] == "length"
        assert "".join(logprobs["tokens"]) == prompt  # (the BOS the tokenizer added shows as "")
        assert len(logprobs["tokens"]) == len(tokens)
        offsets = [sum(len(t) for t in logprobs["tokens"][:i]) for i in range(len(tokens))]
        assert logprobs["text_offset"] == offsets
        check_against_reference(logprobs, tokens, reference, 3)


def test_a_token_id_prompt_is_echoed_then_continued(scoring_server: ServerProcess, reference: Reference) -> None:
    tokens = token_ids(scoring_server, PROMPTS[0])
    choice = complete(scoring_server, {"prompt": tokens, "echo": True, "logprobs": 1, "max_tokens": 2,
                                       "logit_bias": NEVER_STOP}).json()["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(tokens) + 2
    assert "".join(logprobs["tokens"]) == choice["text"]  # the prompt's text, "<bos>" written out, and the reply
    assert choice["text"].startswith("<bos>" + PROMPTS[0])
    check_against_reference({k: v[: len(tokens)] for k, v in logprobs.items()}, tokens, reference, 1)
    assert all(lp <= 0.0 for lp in logprobs["token_logprobs"][len(tokens):])
    assert logprobs["text_offset"][len(tokens)] == len("<bos>" + PROMPTS[0])


def test_a_cached_prompt_still_has_every_tokens_logprob(scoring_server: ServerProcess, reference: Reference) -> None:
    prompt = PROMPTS[1] + " It is a well known fact."
    tokens = token_ids(scoring_server, prompt)
    plain = complete(scoring_server, {"prompt": prompt, "max_tokens": 1})  # leaves the prompt in a slot's cache
    assert plain.status_code == 200
    replies = [complete(scoring_server, {"prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0}).json()
               for _ in range(2)]
    for reply in replies:
        logprobs = reply["choices"][0]["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(tokens)  # no gap where the cache held the prefix
        check_against_reference(logprobs, tokens, reference, 1)
    first, again = (reply["choices"][0]["logprobs"]["token_logprobs"][1:] for reply in replies)
    assert np.allclose(first, again, atol=1e-6)


def test_prompt_logprobs_in_vllms_shape(scoring_server: ServerProcess, reference: Reference) -> None:
    tokens = token_ids(scoring_server, PROMPTS[2])
    rows = reference(tokens)
    choice = complete(scoring_server, {"prompt": PROMPTS[2], "prompt_logprobs": 2, "max_tokens": 1}).json()["choices"][0]
    assert choice["logprobs"] is None  # (not asked)
    positions = choice["prompt_logprobs"]
    assert len(positions) == len(tokens) and positions[0] is None
    for i, position in enumerate(positions[1:], start=1):
        own = position[str(tokens[i])]
        assert abs(own["logprob"] - rows[i - 1, tokens[i]]) < TOLERANCE
        assert own["rank"] == int((rows[i - 1] > rows[i - 1, tokens[i]]).sum()) + 1
        assert 2 <= len(position) <= 3  # the token and its two most likely alternatives, one of them maybe itself
        assert {entry["rank"] for key, entry in position.items() if key != str(tokens[i])} <= {1, 2}
        assert all(set(entry) == {"logprob", "rank", "decoded_token"} for entry in position.values())


def test_chat_prompt_logprobs_cover_the_rendered_prompt(scoring_server: ServerProcess) -> None:
    body = chat(scoring_server.url, user("Hello there", 2, prompt_logprobs=0, temperature=0)).json()
    positions = body["prompt_logprobs"]
    assert positions[0] is None and len(positions) == body["usage"]["prompt_tokens"]
    for position in positions[1:]:
        [(token, entry)] = position.items()  # 0 alternatives: the token alone
        assert int(token) >= 0 and entry["logprob"] <= 0.0 and entry["rank"] >= 1
    plain = chat(scoring_server.url, user("Hello there", 2, temperature=0)).json()
    assert "prompt_logprobs" not in plain


def test_streamed_echo_carries_the_same_logprobs(scoring_server: ServerProcess) -> None:
    request = {"prompt": PROMPTS[0], "echo": True, "logprobs": 2, "max_tokens": 3, "logit_bias": NEVER_STOP}
    whole = complete(scoring_server, request).json()["choices"][0]
    chunks = [c["choices"][0] for c in sse_chunks(complete(scoring_server, {**request, "stream": True}).content)
              if c["choices"]]
    assert "".join(c["text"] for c in chunks) == whole["text"]
    streamed: dict[str, list[Any]] = {"tokens": [], "token_logprobs": []}
    for chunk in chunks:
        if chunk["logprobs"]:
            streamed["tokens"] += chunk["logprobs"]["tokens"]
            streamed["token_logprobs"] += chunk["logprobs"]["token_logprobs"]
    assert streamed["tokens"] == whole["logprobs"]["tokens"]
    assert streamed["token_logprobs"][0] is None
    assert np.allclose(streamed["token_logprobs"][1:], whole["logprobs"]["token_logprobs"][1:], atol=1e-6)


def test_bad_scoring_requests_are_400_naming_the_field(scoring_server: ServerProcess) -> None:
    for body, param in [
        ({"prompt": "x", "echo": True, "logprobs": 6}, "logprobs"),
        ({"prompt": "x", "prompt_logprobs": 21}, "prompt_logprobs"),
        ({"prompt": "x", "prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),  # nothing to return
        ({"prompt": "x", "echo": True, "max_tokens": -1}, "max_tokens"),
    ]:
        assert error_of(complete(scoring_server, body), 400)["param"] == param, body
    streamed = chat(scoring_server.url, user("Hi", 2, prompt_logprobs=1, stream=True))
    assert error_of(streamed, 400)["param"] == "prompt_logprobs"


def test_without_scoring_nothing_is_scored(scoring_server: ServerProcess) -> None:
    choice = complete(scoring_server, {"prompt": PROMPTS[0], "max_tokens": 2, "logprobs": 1}).json()["choices"][0]
    assert "prompt_logprobs" not in choice
    assert len(choice["logprobs"]["tokens"]) <= 2 and all(math.isfinite(x) for x in choice["logprobs"]["token_logprobs"])


def test_every_choice_of_a_prompt_is_echoed_with_its_scores(scoring_server: ServerProcess) -> None:
    request = {"prompt": PROMPTS[:2], "n": 2, "echo": True, "logprobs": 1, "max_tokens": 2, "temperature": 1.0,
               "seed": 7, "logit_bias": NEVER_STOP}
    choices = complete(scoring_server, request).json()["choices"]
    assert len(choices) == 4
    for choice in choices:
        prompt = PROMPTS[choice["index"] // 2]
        tokens = choice["logprobs"]["tokens"]
        assert choice["text"].startswith(prompt) and "".join(tokens) == choice["text"]
        assert len(tokens) == len(token_ids(scoring_server, prompt)) + 2
    for cache_prompt in (True, False):
        chunks = sse_chunks(complete(scoring_server, {**request, "stream": True, "cache_prompt": cache_prompt}).content)
        texts: dict[int, str] = {}
        for chunk in chunks:
            for choice in chunk["choices"]:
                texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        assert all(texts[i].startswith(PROMPTS[i // 2]) for i in range(4)), texts  # the echo came first
