"""A server started with --api-key, --alias and --chat-template FILE (the model given by path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests

from tests.api.conftest import (
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    assert_cors,
    error_of,
    start_process,
    user,
)

KEY = "sk-test-7f3a"
ALIAS = "demo-alias"
# Gemma 3's published template, reduced to its turn format and its refusal of
# conversations whose roles do not alternate (the demo GGUF ships none).
ALTERNATING_TEMPLATE = """\
{{ bos_token }}
{%- for message in messages -%}
{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
{%- endif -%}
{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}
{{- message['content'] | trim }}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}
"""


@pytest.fixture(scope="module")
def keyed(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("keyed")
    template = folder / "gemma.jinja"
    template.write_text(ALTERNATING_TEMPLATE)
    running = start_process(
        [model_path, "--api-key", KEY, "--alias", ALIAS, "--chat-template", str(template),
         "-c", "2048", "-np", "2", "-n", "8", *ONE_THREAD],
        folder / "stderr.log",
    )
    yield running
    running.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ENDPOINTS: list[tuple[str, str, Any]] = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", user("Hi", 1)),
    ("POST", "/v1/embeddings", {"input": "Hi"}),
]


def test_health_needs_no_key(keyed: ServerProcess) -> None:
    response = requests.get(f"{keyed.url}/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "loaded"}


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, bearer("wrong"), {"Authorization": KEY}, bearer(KEY + "x"), {"Authorization": f"Basic {KEY}"}],
    ids=["none", "wrong-key", "no-bearer", "key-prefix", "basic"],
)
def test_every_endpoint_but_health_requires_the_key(
    keyed: ServerProcess, method: str, path: str, body: Any, headers: dict[str, str]
) -> None:
    response = requests.request(method, f"{keyed.url}{path}", json=body, headers=headers, timeout=TIMEOUT)
    error = error_of(response, 401)
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in error["message"]
    assert KEY not in response.text
    assert_cors(response)


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_the_right_key_is_let_in(keyed: ServerProcess, method: str, path: str, body: Any) -> None:
    response = requests.request(method, f"{keyed.url}{path}", json=body, headers=bearer(KEY), timeout=TIMEOUT)
    assert response.status_code == 200, response.text


def test_the_key_is_checked_before_the_body(keyed: ServerProcess) -> None:
    response = requests.post(f"{keyed.url}/v1/chat/completions", data=b"{not json", timeout=TIMEOUT)
    error_of(response, 401)


def test_a_browser_preflight_needs_no_key(keyed: ServerProcess) -> None:
    # Browsers send the preflight without credentials; refusing it would block every page.
    response = requests.options(
        f"{keyed.url}/v1/chat/completions",
        headers={"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 204
    assert_cors(response)


def test_sdk_with_the_key(keyed: ServerProcess) -> None:
    with openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0) as client:
        assert [m.id for m in client.models.list()] == [ALIAS]
        completion = client.chat.completions.create(
            model=ALIAS, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        )
        assert completion.model == ALIAS
        assert completion.choices[0].message.content is not None
        assert len(client.embeddings.create(model=ALIAS, input="Hi").data[0].embedding) == 640


def test_sdk_with_a_wrong_key(keyed: ServerProcess) -> None:
    with openai.OpenAI(base_url=keyed.base_url, api_key="sk-wrong", max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError) as refused:
        client.models.list()
    assert refused.value.status_code == 401


def test_alias_is_the_model_id(keyed: ServerProcess) -> None:
    body = user("Hi", 1)
    reply = requests.post(f"{keyed.url}/v1/chat/completions", json=body, headers=bearer(KEY), timeout=TIMEOUT)
    assert reply.json()["model"] == ALIAS
    embedded = requests.post(f"{keyed.url}/v1/embeddings", json={"input": "Hi"}, headers=bearer(KEY), timeout=TIMEOUT)
    assert embedded.json()["model"] == ALIAS


def test_server_max_tokens_flag_caps_replies(keyed: ServerProcess) -> None:
    body = user("Tell me a story.", 500, logit_bias={"1": -100, "106": -100, "212": -100})
    reply = requests.post(f"{keyed.url}/v1/chat/completions", json=body, headers=bearer(KEY), timeout=TIMEOUT)
    assert reply.json()["usage"]["completion_tokens"] == 8  # -n 8
    assert reply.json()["choices"][0]["finish_reason"] == "length"


def test_chat_template_file_is_used(keyed: ServerProcess) -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
             {"role": "user", "content": "Bye"}]
    ok = requests.post(f"{keyed.url}/v1/chat/completions", json={"messages": turns, "max_tokens": 1},
                       headers=bearer(KEY), timeout=TIMEOUT)
    assert ok.status_code == 200, ok.text
    # Only the file's template refuses two user turns in a row (the built-in one accepts them).
    twice: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hi again"}]
    refused = requests.post(f"{keyed.url}/v1/chat/completions", json={"messages": twice, "max_tokens": 1},
                            headers=bearer(KEY), timeout=TIMEOUT)
    error = error_of(refused, 400)
    assert error["param"] == "messages"
    assert "Conversation roles must alternate" in error["message"]
    assert_cors(refused)


def test_banner_reports_the_configuration(keyed: ServerProcess) -> None:
    banner = keyed.stderr()
    assert "api key  required" in banner
    assert KEY not in banner  # the secret itself is never logged
    assert f"id       {ALIAS}" in banner
    assert "(the bundled demo model)" not in banner


def test_anthropic_clients_send_the_key_as_x_api_key(keyed: ServerProcess) -> None:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    ok = requests.post(f"{keyed.url}/v1/messages", json=body, headers={"x-api-key": KEY}, timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.json()["type"] == "message"
    refused = requests.post(f"{keyed.url}/v1/messages", json=body, headers={"x-api-key": "wrong"}, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.json() == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": refused.json()["error"]["message"]}}
