"""Many models in one server: `igllama api --models-dir DIR`, loaded on demand.

Real servers over a temporary models dir holding the demo model, SmolLM2
(renamed `smol` by a models.toml) and a broken file, driven over HTTP as a
user would: a request's `model` picks the model, the first request for one
loads it, `--models-max` and `--models-idle-unload` unload, an unknown model
is a 404 in each dialect's shape, and the broken file fails only its own
requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api.conftest import (
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    chat,
    error_of,
    sse_chunks,
    start_process,
    user,
    wait_until,
)
from tests.models import SMOLLM2

DEMO = "gemma-demo"
SMOL = "smol"
BROKEN = "broken"


@pytest.fixture(scope="module")
def models_dir(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, SmolLM2 under an alias with its own context size, and a broken file."""
    folder = tmp_path_factory.mktemp("models")
    (folder / f"{DEMO}.gguf").symlink_to(model_path)
    (folder / "instruct").mkdir()
    (folder / "instruct" / "SmolLM2.gguf").symlink_to(SMOLLM2.path())
    (folder / f"{BROKEN}.gguf").write_bytes(b"GGUF" + bytes(60))  # the magic, then nothing llama.cpp can read
    (folder / "models.toml").write_text(f'["instruct/SmolLM2.gguf"]\nalias = "{SMOL}"\nctx_size = 1024\n')
    return folder


@contextmanager
def serving(models_dir: Path, tmp_path_factory: pytest.TempPathFactory, *flags: str) -> Iterator[ServerProcess]:
    """`igllama api --models-dir DIR FLAGS`, stopped at the end."""
    log = tmp_path_factory.mktemp("models-server") / "stderr.log"
    server = start_process(["--models-dir", str(models_dir), "-c", "2048", "-np", "2", "-n", "16", "--temp", "0",
                            *ONE_THREAD, *flags], log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def many(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with serving(models_dir, tmp_path_factory, "--metrics") as server:
        yield server


def states(server: ServerProcess) -> dict[str, str]:
    listed = requests.get(f"{server.url}/v1/models", timeout=TIMEOUT).json()["data"]
    return {model["id"]: model["status"]["value"] for model in listed}


def loaded(server: ServerProcess) -> set[str]:
    return {model["name"] for model in requests.get(f"{server.url}/api/ps", timeout=TIMEOUT).json()["models"]}


def reply(server: ServerProcess, model: str, text: str = "Say hello.", max_tokens: int = 8) -> dict[str, Any]:
    response = chat(server.url, {**user(text, max_tokens), "model": model})
    assert response.status_code == 200, response.text
    return response.json()


def test_every_model_is_listed_and_none_is_loaded_before_it_is_asked_for(many: ServerProcess) -> None:
    listed = requests.get(f"{many.url}/v1/models", timeout=TIMEOUT).json()["data"]
    by_name = {model["id"]: model for model in listed}
    assert set(by_name) == {DEMO, SMOL, BROKEN}
    assert "instruct/SmolLM2.gguf" in by_name[SMOL]["aliases"]
    tags = {model["name"] for model in requests.get(f"{many.url}/api/tags", timeout=TIMEOUT).json()["models"]}
    assert tags == {DEMO, SMOL, BROKEN}
    health = requests.get(f"{many.url}/health", timeout=TIMEOUT)
    assert health.status_code == 200
    assert requests.get(f"{many.url}/health", params={"model": "nope"}, timeout=TIMEOUT).status_code == 404


def test_two_models_answer_alternately_each_in_its_own_voice(many: ServerProcess) -> None:
    alone = {model: reply(many, model)["choices"][0]["message"]["content"] for model in (DEMO, SMOL)}
    assert alone[DEMO] and alone[SMOL]
    for model in (DEMO, SMOL, DEMO, SMOL):
        body = reply(many, model)
        assert body["model"] == model
        assert body["choices"][0]["message"]["content"] == alone[model]  # greedy: the same reply each time
    assert {DEMO, SMOL} <= loaded(many)
    assert states(many)[DEMO] == states(many)[SMOL] == "loaded"
    assert requests.get(f"{many.url}/health", params={"model": SMOL}, timeout=TIMEOUT).json()["model"] == "loaded"
    # SmolLM2 runs with its models.toml context, the demo model with the flag's; /props
    # reports a slot's share of it (two slots), as llama-server does.
    props = requests.get(f"{many.url}/props", params={"model": SMOL}, timeout=TIMEOUT).json()
    assert props["default_generation_settings"]["n_ctx"] == 1024 // 2
    props = requests.get(f"{many.url}/props", params={"model": DEMO}, timeout=TIMEOUT).json()
    assert props["default_generation_settings"]["n_ctx"] == 2048 // 2
    slots = requests.get(f"{many.url}/slots", params={"model": SMOL}, timeout=TIMEOUT).json()
    assert len(slots) == 2 and all(slot["n_ctx"] == 1024 // 2 for slot in slots)
    # Each loaded model's engine gauges, labelled with its name.
    metrics = requests.get(f"{many.url}/metrics", timeout=TIMEOUT).text
    assert f'igllama_kv_cells_total{{model="{SMOL}"}} 1024' in metrics
    assert f'igllama_kv_cells_total{{model="{DEMO}"}} 2048' in metrics


def test_two_models_generating_at_once_do_not_change_each_others_replies(many: ServerProcess) -> None:
    alone = {model: reply(many, model, "Count to twenty.", 16)["choices"][0]["message"]["content"]
             for model in (DEMO, SMOL)}
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda model: reply(many, model, "Count to twenty.", 16), [DEMO, SMOL, DEMO, SMOL]))
    for body in together:
        assert body["choices"][0]["message"]["content"] == alone[body["model"]]


def test_an_unknown_model_is_404_model_not_found_in_each_dialect(many: ServerProcess) -> None:
    error = error_of(chat(many.url, {**user("Hi"), "model": "llama-9000"}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "llama-9000" in error["message"] and DEMO in error["message"] and SMOL in error["message"]
    anthropic = requests.post(f"{many.url}/v1/messages", timeout=TIMEOUT, json={
        "model": "llama-9000", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
    assert anthropic.status_code == 404
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "not_found_error"
    ollama = requests.post(f"{many.url}/api/chat", timeout=TIMEOUT, json={
        "model": "llama-9000", "messages": [{"role": "user", "content": "Hi"}]})
    assert ollama.status_code == 404 and "llama-9000" in ollama.json()["error"]


def test_a_broken_model_fails_its_requests_and_nothing_else(many: ServerProcess) -> None:
    for _ in range(2):  # that request, and the next
        error = error_of(chat(many.url, {**user("Hi"), "model": BROKEN}), 500)
        assert error["code"] == "model_load_failed" and BROKEN in error["message"]
    listed = {m["id"]: m for m in requests.get(f"{many.url}/v1/models", timeout=TIMEOUT).json()["data"]}
    assert listed[BROKEN]["status"]["value"] == "failed" and listed[BROKEN]["status"]["error"]
    assert requests.get(f"{many.url}/health", params={"model": BROKEN}, timeout=TIMEOUT).status_code == 500
    assert requests.get(f"{many.url}/health", timeout=TIMEOUT).status_code == 200
    assert reply(many, SMOL)["choices"][0]["message"]["content"]


def test_with_an_api_key_health_names_no_model_to_a_caller_without_it(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    key = "sk-catalog-5b1e"
    with serving(models_dir, tmp_path_factory, "--api-key", key) as server:
        bearer = {"Authorization": f"Bearer {key}"}
        assert chat(server.url, {**user("Hi"), "model": DEMO}, headers=bearer).status_code == 200
        error_of(chat(server.url, {**user("Hi"), "model": BROKEN}, headers=bearer), 500)
        health = f"{server.url}/health"
        # Without the key: up or not, and nothing else; whether a name exists is not told either.
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": key + "x"}, {"Authorization": key}):
            for model in (None, "nope", DEMO, SMOL, BROKEN):
                response = requests.get(health, params={"model": model}, headers=headers, timeout=TIMEOUT)
                assert (response.status_code, response.json()) == (200, {"status": "ok"}), (headers, model)
        # With it, the details as before: the counts, each model's state, the names of the served ones.
        assert requests.get(health, headers=bearer, timeout=TIMEOUT).json() == {
            "status": "ok", "models": 3, "loaded": 1}
        assert requests.get(health, params={"model": DEMO}, headers=bearer, timeout=TIMEOUT).json() == {
            "status": "ok", "model": "loaded"}
        assert requests.get(health, params={"model": SMOL}, headers={"x-api-key": key}, timeout=TIMEOUT).json() == {
            "status": "ok", "model": "unloaded"}
        failed = requests.get(health, params={"model": BROKEN}, headers=bearer, timeout=TIMEOUT)
        assert failed.status_code == 500 and failed.json()["error"]
        unknown = requests.get(health, params={"model": "nope"}, headers=bearer, timeout=TIMEOUT)
        assert unknown.status_code == 404
        assert all(name in unknown.json()["error"] for name in (DEMO, SMOL, BROKEN))


def test_a_stream_for_a_model_being_loaded_gets_pings_then_its_reply(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with serving(models_dir, tmp_path_factory, "--sse-ping", "0.05") as server:
        with requests.post(f"{server.url}/v1/chat/completions", stream=True, timeout=TIMEOUT,
                           json={**user("Say hello.", 8), "model": SMOL, "stream": True}) as response:
            assert response.status_code == 200
            body = response.raw.read()
        first_data = body.index(b"data: ")
        assert b": ping" in body[:first_data]  # while the model loaded
        chunks = sse_chunks(body)
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
        # The same request for a model that fails to load: the error in the stream, in OpenAI's shape.
        with requests.post(f"{server.url}/v1/chat/completions", stream=True, timeout=TIMEOUT,
                           json={**user("Hi"), "model": BROKEN, "stream": True}) as response:
            body = response.raw.read()
        assert b"model_load_failed" in body and body.rstrip().endswith(b"data: [DONE]")


def test_models_max_1_unloads_the_least_recently_used(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with serving(models_dir, tmp_path_factory, "--models-max", "1", "--spec", "off") as server:
        first = reply(server, DEMO)["choices"][0]["message"]["content"]
        assert loaded(server) == {DEMO}
        reply(server, SMOL)
        assert loaded(server) == {SMOL}
        assert states(server)[DEMO] == "unloaded"
        assert reply(server, DEMO)["choices"][0]["message"]["content"] == first  # loaded again, same reply
        assert loaded(server) == {DEMO}
        # Both at once with room for one: each waits for the other to finish, none fails.
        with ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(lambda model: reply(server, model), [SMOL, DEMO, SMOL, DEMO]))
        assert [body["model"] for body in bodies] == [SMOL, DEMO, SMOL, DEMO]
        assert len(loaded(server)) == 1


def test_a_model_idle_for_models_idle_unload_seconds_is_unloaded(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with serving(models_dir, tmp_path_factory, "--models-idle-unload", "1", "--spec", "off") as server:
        reply(server, SMOL)
        assert loaded(server) == {SMOL}
        wait_until(lambda: states(server)[SMOL] == "unloaded", 15, lambda: f"still loaded: {states(server)}")
        assert not loaded(server)
        assert reply(server, SMOL)["choices"][0]["message"]["content"]  # and it loads again on demand


def test_ollama_loads_and_unloads_a_model_by_an_empty_generate(many: ServerProcess) -> None:
    loaded_now = requests.post(f"{many.url}/api/generate", json={"model": DEMO}, timeout=TIMEOUT).json()
    assert loaded_now["done_reason"] == "load" and DEMO in loaded(many)
    gone = requests.post(f"{many.url}/api/generate", json={"model": DEMO, "keep_alive": 0}, timeout=TIMEOUT).json()
    assert gone["done_reason"] == "unload" and DEMO not in loaded(many)


def test_one_engine_thread_serves_every_loaded_model(models_dir: Path) -> None:
    """In process, through the library: two models loaded, one thread computing for both."""
    import asyncio

    import igllama

    async def run() -> tuple[int, list[str]]:
        async with igllama.Server(None, models_dir=str(models_dir), port=0, threads=1, threads_batch=1,
                                  ctx_size=1024, parallel=1, spec=False) as server:
            replies = []
            for model in (DEMO, SMOL):
                engine = await server.pool.engine(model)
                replies.append(await engine.chat([{"role": "user", "content": "Hi"}], max_tokens=4,
                                                 temperature=0.0).text())
            names = [thread.name for thread in threading.enumerate()]
            return names.count("igllama-engine"), replies

    engine_threads, replies = asyncio.run(run())
    assert engine_threads == 1
    assert all(replies)
    assert "igllama-engine" not in [thread.name for thread in threading.enumerate()]
