"""llama-server's utility endpoints, in its shapes: /tokenize, /detokenize, /apply-template, /props."""

from __future__ import annotations

from typing import Any

import requests

from tests.api.conftest import TIMEOUT, ServerProcess, error_of
from tests.engine.test_template_parity import CONVERSATIONS, RECORDED


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, timeout=TIMEOUT)


def test_tokenize_and_detokenize_round_trip(server: ServerProcess) -> None:
    text = "Hello, wörld! 🌊"
    tokens = post(server, "/tokenize", {"content": text}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert post(server, "/detokenize", {"tokens": tokens}).json()["content"] == text
    with_bos = post(server, "/tokenize", {"content": text, "add_special": True}).json()["tokens"]
    assert with_bos[1:] == tokens  # BOS first


def test_tokenize_with_pieces(server: ServerProcess) -> None:
    pieces = post(server, "/tokenize", {"content": "Hello 🌊", "with_pieces": True}).json()["tokens"]
    assert all(set(p) == {"id", "piece"} for p in pieces)
    text = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in pieces)
    assert text.decode() == "Hello 🌊"


def test_apply_template_gives_the_prompt_llama_server_gives(qwen: ServerProcess) -> None:
    for name in ("user", "tools_offered", "tool_result"):
        body, _ = CONVERSATIONS[name]
        prompt = post(qwen, "/apply-template", body).json()["prompt"]
        assert prompt == RECORDED["qwen2.5-coder-0.5b"][name], name


def test_props_describe_the_server(server: ServerProcess) -> None:
    props = requests.get(f"{server.url}/props", timeout=TIMEOUT).json()
    # llama-server's per-slot context: the shared server's -c 2048 over its slots
    assert props["default_generation_settings"]["n_ctx"] == 2048 // props["total_slots"]
    assert props["total_slots"] >= 1 and props["model_path"].endswith(".gguf")
    assert "chat_template" in props


def test_bad_input_is_400_naming_the_field(server: ServerProcess) -> None:
    assert error_of(post(server, "/tokenize", {"content": 5}), 400)["param"] == "content"
    assert error_of(post(server, "/detokenize", {"tokens": [10**9]}), 400)["param"] == "tokens"
    assert error_of(post(server, "/detokenize", {"tokens": "x"}), 400)["param"] == "tokens"
    assert error_of(post(server, "/apply-template", {"messages": []}), 400)["param"] == "messages"
