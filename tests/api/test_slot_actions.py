"""POST /slots/{id}?action=save|restore|erase, in llama-server's shapes, across a restart."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.api.conftest import (
    ONE_THREAD,
    REFERENCE_FLAGS,
    STARTUP_TIMEOUT,
    TIMEOUT,
    ServerProcess,
    chat,
    health_status,
    reference_binary,
    start_process,
    user,
    wait_until,
)

LOG = "You keep a ship's log. " + " ".join(f"Day {i}: calm sea, wind from the west, all hands well." for i in range(10))


def start(model_path: str, directory: Path, log: Path) -> ServerProcess:
    return start_process([model_path, "-c", "1024", "-np", "1", "--temp", "0", "--spec", "off",
                          "--slot-save-path", str(directory), *ONE_THREAD], log)


@pytest.fixture(scope="module")
def slots_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slots")


@pytest.fixture(scope="module")
def slot_server(model_path: str, slots_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start(model_path, slots_dir, tmp_path_factory.mktemp("slot-server") / "log")
    yield server
    server.stop()


def action(server: ServerProcess, slot: int | str, what: str, body: Any = None) -> requests.Response:
    return requests.post(f"{server.url}/slots/{slot}?action={what}", json=body, timeout=TIMEOUT)


def llama_error(response: requests.Response, status: int) -> dict[str, Any]:
    """llama-server's error shape: {"error": {"code", "message", "type"}}."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and isinstance(error["message"], str) and error["message"]
    return error


def test_without_a_save_path_every_action_is_501(server: ServerProcess) -> None:
    for what in ("save", "restore", "erase", "bogus"):
        error = llama_error(action(server, 0, what, {"filename": "a.bin"}), 501)
        assert error["type"] == "not_supported_error" and "--slot-save-path" in error["message"]


def test_save_restart_restore_gives_the_same_reply_from_the_cache(
        model_path: str, slots_dir: Path, slot_server: ServerProcess, tmp_path: Path) -> None:
    cold = chat(slot_server.url, user(LOG, 8)).json()
    saved = action(slot_server, 0, "save", {"filename": "log.bin"})
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["id_slot"] == 0 and body["filename"] == "log.bin"
    assert body["n_saved"] >= cold["usage"]["prompt_tokens"]
    assert body["n_written"] == (slots_dir / "log.bin").stat().st_size
    assert isinstance(body["timings"]["save_ms"], float)

    restarted = start(model_path, slots_dir, tmp_path / "log")
    try:
        restored = action(restarted, 0, "restore", {"filename": "log.bin"})
        assert restored.status_code == 200, restored.text
        assert restored.json()["n_restored"] == body["n_saved"]
        assert restored.json()["n_read"] == body["n_written"]
        assert isinstance(restored.json()["timings"]["restore_ms"], float)
        again = chat(restarted.url, user(LOG, 8)).json()
        assert again["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]
        prompt_tokens = again["usage"]["prompt_tokens"]
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == prompt_tokens - 1
        assert again["timings"]["cache_n"] == prompt_tokens - 1  # llama-server's count of it
        erased = action(restarted, 0, "erase")
        assert erased.status_code == 200 and erased.json()["id_slot"] == 0
        assert erased.json()["n_erased"] >= prompt_tokens
        after = chat(restarted.url, user(LOG, 1)).json()
        assert after["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    finally:
        restarted.stop()


@pytest.mark.parametrize("name", ["../escape.bin", "/tmp/abs.bin", "a/b.bin", "a\\b.bin", "..", ".", "",
                                  "x" * 256, " padded.bin", "nul\u0000.bin", "c:evil.bin", 7, None])
def test_names_outside_the_directory_are_refused(slot_server: ServerProcess, slots_dir: Path, name: Any) -> None:
    before = set(os.listdir(slots_dir.parent))
    for what in ("save", "restore"):
        error = llama_error(action(slot_server, 0, what, {"filename": name}), 400)
        assert error["type"] == "invalid_request_error" and "filename" in error["message"].lower()
    assert set(os.listdir(slots_dir.parent)) == before  # nothing written beside the directory


def test_a_symbolic_link_in_the_directory_is_not_followed(slot_server: ServerProcess, slots_dir: Path,
                                                          tmp_path: Path) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"secret")
    (slots_dir / "link.bin").symlink_to(outside)
    for what in ("save", "restore"):
        llama_error(action(slot_server, 0, what, {"filename": "link.bin"}), 400)
    assert outside.read_bytes() == b"secret"


def test_bad_ids_actions_and_files(slot_server: ServerProcess, slots_dir: Path) -> None:
    assert "Invalid slot ID" in llama_error(action(slot_server, "x", "save", {"filename": "a.bin"}), 400)["message"]
    assert "0..0" in llama_error(action(slot_server, 5, "save", {"filename": "a.bin"}), 400)["message"]
    assert "Invalid action" in llama_error(action(slot_server, 0, "bogus", {"filename": "a.bin"}), 400)["message"]
    missing = llama_error(action(slot_server, 0, "restore", {"filename": "missing.bin"}), 400)
    assert "missing.bin" in missing["message"]
    (slots_dir / "junk.bin").write_bytes(b"junk" * 100)
    assert "could not restore" in llama_error(action(slot_server, 0, "restore", {"filename": "junk.bin"}), 400)["message"]
    assert chat(slot_server.url, user("Still here?", 2)).status_code == 200


def test_a_busy_slot_is_a_409(slot_server: ServerProcess) -> None:
    body = user("Count from one to a hundred.", 200, stream=True, logit_bias={"1": -100, "106": -100, "212": -100})
    with requests.post(f"{slot_server.url}/v1/chat/completions", json=body, stream=True, timeout=TIMEOUT) as stream:
        lines = stream.iter_lines()
        while b'"content":"' not in next(lines):  # (the first chunk, the role, may come before the slot is taken)
            pass
        # Generating now: the one slot is busy.
        error = llama_error(action(slot_server, 0, "save", {"filename": "busy.bin"}), 409)
        assert "slot 0" in error["message"]


# -- beside llama-server (the reference build of scripts/reference_server.py, when it is there)


@pytest.fixture(scope="module")
def reference(model_path: str, slots_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = reference_binary()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path_factory.mktemp("reference") / "log").open("wb")
    process = subprocess.Popen([str(binary), "-m", model_path, "--port", str(port), "-c", "1024", "-np", "1",
                                "-t", "1", *REFERENCE_FLAGS, "--slot-save-path", str(slots_dir)], stdout=log, stderr=log,
                               stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: health_status(url) == 200, STARTUP_TIMEOUT, "the reference llama-server did not start")
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


def test_shapes_and_statuses_match_llama_server(reference: str, slot_server: ServerProcess) -> None:
    def both(slot: int | str, what: str, body: Any) -> tuple[requests.Response, requests.Response]:
        ours = action(slot_server, slot, what, body)
        theirs = requests.post(f"{reference}/slots/{slot}?action={what}", json=body, timeout=TIMEOUT)
        return ours, theirs

    for server_url in (slot_server.url, reference):
        chat(server_url, user(LOG, 4))
    for what, name in (("save", "ours.bin"), ("restore", "ours.bin"), ("erase", None)):
        ours, theirs = both(0, what, {"filename": name} if name else None)
        assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
        assert set(ours.json()) == set(theirs.json())
        assert {k: type(v) for k, v in ours.json().items()} == {k: type(v) for k, v in theirs.json().items()}
    for slot, what, body in ((0, "bogus", {"filename": "a.bin"}), ("x", "save", {"filename": "a.bin"}),
                             (0, "save", {"filename": "../a.bin"})):
        ours, theirs = both(slot, what, body)
        assert ours.status_code == theirs.status_code == 400
        assert set(ours.json()["error"]) == set(theirs.json()["error"])
        assert ours.json()["error"]["type"] == theirs.json()["error"]["type"]


def test_a_file_llama_server_saved_restores_here(reference: str, slot_server: ServerProcess) -> None:
    """The file format is llama.cpp's: llama-server's file loads into our context. (The token ids
    llama-server records are its slot's, which need not be the ones igllama makes of a prompt:
    reuse across the two servers is not promised, see docs/slots-and-lora.md.)"""
    body = {"prompt": LOG, "max_tokens": 4, "temperature": 0}
    assert requests.post(f"{reference}/v1/completions", json=body, timeout=TIMEOUT).status_code == 200
    saved = requests.post(f"{reference}/slots/0?action=save", json={"filename": "theirs.bin"}, timeout=TIMEOUT)
    assert saved.status_code == 200 and saved.json()["n_saved"] > 0
    restored = action(slot_server, 0, "restore", {"filename": "theirs.bin"})
    assert restored.status_code == 200, restored.text
    assert restored.json()["n_read"] == saved.json()["n_written"]
    assert restored.json()["n_restored"] >= saved.json()["n_saved"]
    assert chat(slot_server.url, user("Still well?", 2)).status_code == 200
