"""LoRA adapters over HTTP: --lora flags, GET/POST /lora-adapters and a request's `lora` field,
with an adapter written for the demo model by the test (none is published for it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from igllama.cli import parse_config
from tests.api.conftest import (
    NEVER_STOP,
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    chat,
    run_cli,
    start_process,
    user,
)
from tests.lora_adapter import write_adapter


@pytest.fixture(scope="module")
def adapters(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lora")
    return (write_adapter(model_path, folder / "first.gguf"),
            write_adapter(model_path, folder / "second.gguf", layers=(2,), seed=11))


@pytest.fixture(scope="module")
def lora_server(model_path: str, adapters: tuple[Path, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    first, second = adapters
    server = start_process([model_path, "-c", "1024", "-np", "2", "--temp", "0", "--spec", "off",
                            "--lora", str(first), "--lora-scaled", f"{second}:0.5", "--lora-init-without-apply",
                            *ONE_THREAD], tmp_path_factory.mktemp("lora-server") / "log")
    yield server
    server.stop()


def listed(server: ServerProcess) -> list[dict[str, Any]]:
    response = requests.get(f"{server.url}/lora-adapters", timeout=TIMEOUT)
    assert response.status_code == 200
    return response.json()


def set_scales(server: ServerProcess, body: Any) -> requests.Response:
    return requests.post(f"{server.url}/lora-adapters", json=body, timeout=TIMEOUT)


def logprobs(server: ServerProcess, **fields: Any) -> list[float]:
    body = user("Name three colours.", 6, logprobs=True, top_logprobs=0, logit_bias=NEVER_STOP, cache_prompt=False,
                **fields)
    response = chat(server.url, body)
    assert response.status_code == 200, response.text
    return [entry["logprob"] for entry in response.json()["choices"][0]["logprobs"]["content"]]


def test_get_lists_the_adapters_and_reflects_post(lora_server: ServerProcess, adapters: tuple[Path, Path]) -> None:
    first, second = adapters
    assert listed(lora_server) == [  # --lora-init-without-apply: loaded at scale 0
        {"id": 0, "path": str(first), "scale": 0.0, "task_name": "", "prompt_prefix": ""},
        {"id": 1, "path": str(second), "scale": 0.0, "task_name": "", "prompt_prefix": ""},
    ]
    try:
        response = set_scales(lora_server, [{"id": 1, "scale": 0.25}])
        assert response.status_code == 200 and response.json() == {"success": True}
        assert [entry["scale"] for entry in listed(lora_server)] == [0.0, 0.25]
        set_scales(lora_server, [{"id": 0, "scale": 1}])  # the adapters not listed go back to 0
        assert [entry["scale"] for entry in listed(lora_server)] == [1.0, 0.0]
    finally:
        set_scales(lora_server, [])
    assert [entry["scale"] for entry in listed(lora_server)] == [0.0, 0.0]


def test_scale_zero_is_no_adapter_and_a_scale_changes_the_reply(lora_server: ServerProcess) -> None:
    bare = logprobs(lora_server)
    assert logprobs(lora_server, lora=[{"id": 0, "scale": 0}]) == bare
    scaled = logprobs(lora_server, lora=[{"id": 0, "scale": 1.0}])
    assert scaled != bare
    assert logprobs(lora_server, lora=[{"id": 0, "scale": 1.0}]) == scaled
    try:  # the global scales are what a request without `lora` gets
        set_scales(lora_server, [{"id": 0, "scale": 1.0}])
        assert logprobs(lora_server) == scaled
        assert logprobs(lora_server, lora=[{"id": 1, "scale": 0}]) == bare  # a list sets the others to 0
    finally:
        set_scales(lora_server, [])


def test_text_completions_take_the_lora_field_too(lora_server: ServerProcess) -> None:
    def values(lora: Any) -> list[float]:
        body = {"prompt": "The sea is", "max_tokens": 6, "logit_bias": NEVER_STOP, "logprobs": 0, "lora": lora}
        response = requests.post(f"{lora_server.url}/v1/completions", json=body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["logprobs"]["token_logprobs"]

    bare = values([{"id": 0, "scale": 0}])
    assert values([]) == bare  # the global scales: 0 here
    assert values([{"id": 0, "scale": 1}]) != bare


@pytest.mark.parametrize("lora", [[{"id": 2, "scale": 1}], [{"id": -1, "scale": 1}], [{"id": 0, "scale": 1e6}],
                                  [{"id": 0, "scale": "x"}], [{"id": "0", "scale": 1}], [{"scale": 1}],
                                  {"id": 0, "scale": 1}, "0"])
def test_a_bad_id_or_scale_is_a_400(lora_server: ServerProcess, lora: Any) -> None:
    response = chat(lora_server.url, user("hi", 2, lora=lora))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "lora"
    posted = set_scales(lora_server, lora)
    assert posted.status_code == 400, posted.text
    assert posted.json()["error"]["code"] == 400  # llama-server's shape on its own route
    assert [entry["scale"] for entry in listed(lora_server)] == [0.0, 0.0]  # unchanged


def test_the_lora_flags(model_path: str, adapters: tuple[Path, Path]) -> None:
    first, second = adapters
    config = parse_config(["api", model_path, "--lora", f"{first},{second}", "--lora-scaled", f"{second}:0.5",
                           "--lora-scaled", str(first), "-2"])
    assert config.lora == ((str(first), 1.0), (str(second), 1.0), (str(second), 0.5), (str(first), -2.0))
    for flags in (["--lora", "missing.gguf"], ["--lora-scaled", f"{first}:lots"], ["--lora-scaled", f"{first}:nan"]):
        result = run_cli("api", model_path, *flags)
        assert result.returncode == 2 and "lora" in result.stderr.lower(), result.stderr


def test_llama_servers_completion_takes_the_lora_field(lora_server: ServerProcess) -> None:
    def values(lora: Any) -> list[float]:
        body = {"prompt": "The sea is", "n_predict": 6, "n_probs": 1, "logit_bias": NEVER_STOP, "lora": lora}
        response = requests.post(f"{lora_server.url}/completion", json=body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return [entry["logprob"] for entry in response.json()["completion_probabilities"]]

    bare = values([{"id": 0, "scale": 0}])
    assert values([{"id": 0, "scale": 1}]) != bare
    refused = requests.post(f"{lora_server.url}/completion", json={"prompt": "x", "lora": [{"id": 9, "scale": 1}]},
                            timeout=TIMEOUT)
    assert refused.status_code == 400
    assert set(refused.json()["error"]) == {"code", "message", "type"} and "lora" in refused.json()["error"]["message"]
