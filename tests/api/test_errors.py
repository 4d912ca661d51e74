"""Every error a client can provoke: its status, its OpenAI-shaped body, and CORS on it."""

from __future__ import annotations

import re
import socket
from typing import Any

import orjson
import pytest
import requests

from tests.api.conftest import TIMEOUT, ServerProcess, assert_cors, chat, error_of, user

HI = [{"role": "user", "content": "Hi"}]


def post_raw(url: str, path: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}{path}", data=data, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)


@pytest.mark.parametrize(
    ("path", "data", "says"),
    [
        ("/v1/chat/completions", b'{"messages": [', "not valid JSON"),
        ("/v1/chat/completions", b"", "empty"),
        ("/v1/chat/completions", b'[{"role": "user", "content": "Hi"}]', "JSON object"),
        ("/v1/embeddings", b"{input: 'Hello'}", "not valid JSON"),
    ],
    ids=["truncated", "empty-body", "array-body", "embeddings-not-json"],
)
def test_a_body_that_is_not_a_json_object_is_400(server: ServerProcess, path: str, data: bytes, says: str) -> None:
    response = post_raw(server.url, path, data)
    error = error_of(response, 400)
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert_cors(response)


# (request body, the param the error names, words its message must hold)
CHAT_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "messages", "messages is required"),
    ({"messages": "Hi"}, "messages", "messages is required"),
    ({"messages": []}, "messages", "at least one message"),
    ({"messages": ["Hi"]}, "messages[0]", "messages[0] must be an object"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages[0].role", "messages[0].role must be one of"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": 7}]}, "messages[0].content", "messages[0].content must be"),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "messages[0].content", "messages[0].content[0] must be a text part",
    ),
    ({"messages": HI, "max_tokens": "ten"}, "max_tokens", "max_tokens must be an integer"),
    ({"messages": HI, "max_tokens": 1.5}, "max_tokens", "max_tokens must be an integer"),
    ({"messages": HI, "max_tokens": 0}, "max_tokens", "max_tokens must be at least 1"),
    ({"messages": HI, "max_completion_tokens": -1}, "max_completion_tokens", "max_completion_tokens must be at least 1"),
    ({"messages": HI, "temperature": 2.5}, "temperature", "temperature must be at least 0.0 and at most 2.0"),
    ({"messages": HI, "temperature": "hot"}, "temperature", "temperature must be a number"),
    ({"messages": HI, "top_p": 1.5}, "top_p", "top_p must be"),
    ({"messages": HI, "top_k": -1}, "top_k", "top_k must be at least 0"),
    ({"messages": HI, "top_k": 2**40}, "top_k", "top_k must be at most 2147483647"),
    ({"messages": HI, "presence_penalty": -3}, "presence_penalty", "presence_penalty must be"),
    ({"messages": HI, "frequency_penalty": 2.5}, "frequency_penalty", "frequency_penalty must be"),
    ({"messages": HI, "seed": "x"}, "seed", "seed must be an integer"),
    ({"messages": HI, "stream": "yes"}, "stream", "stream must be true or false"),
    ({"messages": HI, "stream": True, "stream_options": []}, "stream_options", "stream_options must be an object"),
    (
        {"messages": HI, "stream": True, "stream_options": {"include_usage": 1}},
        "stream_options.include_usage", "stream_options.include_usage must be true or false",
    ),
    ({"messages": HI, "stop": 5}, "stop", "stop must be a string or an array"),
    ({"messages": HI, "stop": ["a"] * 17}, "stop", "at most 16"),
    ({"messages": HI, "n": 0}, "n", "n must be at least 1"),
    ({"messages": HI, "n": 500}, "n", "n must be at most 128"),
    ({"messages": HI, "n": "one"}, "n", "n must be an integer"),
    ({"messages": HI, "logit_bias": {"9999999": 1}}, "logit_bias", "outside the vocabulary"),
    ({"messages": HI, "logit_bias": {"x": 1}}, "logit_bias", "not a token id"),
    ({"messages": HI, "logit_bias": {"5": 101}}, "logit_bias", "from -100 to 100"),
    ({"messages": HI, "chat_template_kwargs": {"enable_thinking": "no"}},
     "chat_template_kwargs.enable_thinking", "enable_thinking must be true or false"),
    ({"messages": HI, "model": 5}, "model", "model must be a string"),
]


@pytest.mark.parametrize(("body", "param", "says"), CHAT_REFUSALS, ids=[c[2][:40] for c in CHAT_REFUSALS])
def test_chat_refusals_are_400_naming_the_field(server: ServerProcess, body: dict[str, Any], param: str,
                                                says: str) -> None:
    response = chat(server.url, body)
    error = error_of(response, 400)
    assert error["param"] == param
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == 400
    assert_cors(response)


EMBEDDING_REFUSALS: list[tuple[dict[str, Any], str, str]] = [
    ({}, "input", "input must be a string"),
    ({"input": 5}, "input", "input must be a string"),
    ({"input": []}, "input", "not empty"),
    ({"input": ["ok", 5]}, "input", "input[1] must be a string or an array of token ids"),
    ({"input": [[1, 2], [3, "x"]]}, "input", "input[1] must be"),
    ({"input": [[2, 999999999]]}, "input", "token id 999999999, outside the vocabulary"),
    ({"input": [[]]}, "input", "input[0] is empty"),
    ({"input": "Hello", "encoding_format": "int8"}, "encoding_format", "encoding_format must be 'float' or 'base64'"),
    ({"input": "Hello", "model": ["x"]}, "model", "model must be a string"),
]


@pytest.mark.parametrize(("body", "param", "says"), EMBEDDING_REFUSALS, ids=[c[2][:40] for c in EMBEDDING_REFUSALS])
def test_embedding_refusals_are_400_naming_the_field(server: ServerProcess, body: dict[str, Any], param: str,
                                                     says: str) -> None:
    response = requests.post(f"{server.url}/v1/embeddings", json=body, timeout=TIMEOUT)
    error = error_of(response, 400)
    assert error["param"] == param
    assert says in error["message"]
    assert_cors(response)


def test_embedding_input_longer_than_a_batch_is_400(server: ServerProcess) -> None:
    response = requests.post(f"{server.url}/v1/embeddings", json={"input": "word " * 2000}, timeout=TIMEOUT)
    error = error_of(response, 400)
    assert error["param"] == "input"
    assert re.search(r"input\[0\] has \d+ tokens, more than the \d+ an input may have", error["message"])


def test_prompt_over_the_context_is_400_with_both_sizes(server: ServerProcess) -> None:
    response = chat(server.url, user("hello " * 2500, 4))
    error = error_of(response, 400)
    assert error["param"] == "messages"
    match = re.search(r"the prompt has (\d+) tokens but the context holds (\d+)", error["message"])
    assert match, error["message"]
    n_prompt, n_ctx = int(match.group(1)), int(match.group(2))
    assert n_ctx == 2048  # the server's --ctx-size
    assert n_prompt > 2500
    assert "--ctx-size" in error["message"]
    # The server is fine afterwards.
    assert chat(server.url, user("Hi", 1)).status_code == 200


def test_streamed_request_refused_before_it_starts_is_a_plain_400(server: ServerProcess) -> None:
    response = chat(server.url, user("hello " * 2500, 4, stream=True))
    error_of(response, 400)  # a JSON error, not an event stream
    assert_cors(response)


@pytest.mark.parametrize("path", ["/v1/completion", "/v1/nothing", "/v1/chat/completions/extra", "/v2/models"])
def test_unknown_path_is_404_naming_it(server: ServerProcess, path: str) -> None:
    response = requests.post(f"{server.url}{path}", json={}, timeout=TIMEOUT)
    error = error_of(response, 404)
    assert path in error["message"]
    assert error["type"] == "not_found_error"
    assert_cors(response)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST, OPTIONS"),
        ("PUT", "/v1/embeddings", "POST, OPTIONS"),
        ("POST", "/v1/models", "GET, OPTIONS"),
        ("DELETE", "/health", "GET, OPTIONS"),
    ],
)
def test_wrong_method_is_405_with_allow(server: ServerProcess, method: str, path: str, allow: str) -> None:
    response = requests.request(method, f"{server.url}{path}", timeout=TIMEOUT)
    error = error_of(response, 405)
    assert method in error["message"] and path in error["message"]
    assert response.headers["allow"] == allow
    assert_cors(response)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/health", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", user("Hi", 1)),
        ("POST", "/v1/embeddings", {"input": "Hi"}),
    ],
)
def test_successes_carry_cors_headers(server: ServerProcess, method: str, path: str, body: Any) -> None:
    response = requests.request(method, f"{server.url}{path}", json=body, timeout=TIMEOUT)
    assert response.status_code == 200
    assert_cors(response)


def test_preflight_from_a_browser_is_allowed(server: ServerProcess) -> None:
    response = requests.options(
        f"{server.url}/v1/chat/completions",
        headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 204
    assert_cors(response)
    allowed = {h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"content-type", "authorization"} <= allowed


def raw_exchange(server: ServerProcess, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes; the head and body of the answer, read until the server closes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


def test_a_body_over_the_limit_is_413_before_it_is_sent(server: ServerProcess) -> None:
    head, body = raw_exchange(
        server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 17000000\r\n\r\n"
    )
    assert head.startswith(b"HTTP/1.1 413 ")
    assert b"Access-Control-Allow-Origin: *" in head
    assert orjson.loads(body)["error"]["code"] == 413


def test_a_header_section_over_the_limit_is_431(server: ServerProcess) -> None:
    head, body = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
