#!/usr/bin/env python3
"""Do igllama and llama-server render the same prompts? (and give the same greedy replies?)

For each instruct model of the test suite, starts the reference llama-server
(`--jinja`, built by scripts/reference_server.py) and asks its
`/apply-template` for the prompt of each conversation in CONVERSATIONS (plain
turns, tools offered, a tool call and its result in the history), then
renders the same conversation with igllama's template and compares the text.
`--greedy` also compares the two servers' greedy replies to the plain
conversations (the same machine runs the same kernels: llama-server gets
`--no-repack`, the weight layout igllama uses).

`--write` records llama-server's prompts in tests/engine/data/template_parity.json,
which tests/engine/test_template_parity.py checks igllama against on any
machine (rendering does not depend on the CPU).

    .venv/bin/python scripts/template_parity.py            # compare, print the differences
    .venv/bin/python scripts/template_parity.py --write    # and record llama-server's prompts
    .venv/bin/python scripts/template_parity.py --greedy   # and compare greedy replies
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from igllama.api.fields import Defaults
from igllama.api.openai.chat_requests import parse_chat
from igllama.engine.model import Model, ModelConfig
from igllama.engine.template import load_template
from tests.api.test_tools import QUESTION, WEATHER

RECORD = REPO / "tests" / "engine" / "data" / "template_parity.json"

CALL = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18, "sky": "clear"}'}

# name -> (request body, whether the conversation uses tools)
CONVERSATIONS: dict[str, tuple[dict[str, Any], bool]] = {
    "user": ({"messages": [{"role": "user", "content": "Write a haiku about the sea."}]}, False),
    "system_user": ({"messages": [{"role": "system", "content": "You answer in French."},
                                  {"role": "user", "content": "Name three colours."}]}, False),
    "multi_turn": ({"messages": [{"role": "user", "content": "Hi!"},
                                 {"role": "assistant", "content": "Hello! How can I help?"},
                                 {"role": "user", "content": "Tell me a fact about owls."}]}, False),
    "tools_offered": ({"messages": QUESTION, "tools": [WEATHER]}, True),
    "tool_result": ({"messages": [*QUESTION, CALL, RESULT], "tools": [WEATHER]}, True),
    "system_tools_two_calls": ({"messages": [
        {"role": "system", "content": "Be brief."}, *QUESTION,
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            CALL["tool_calls"][0],
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]},
        RESULT, {"role": "tool", "tool_call_id": "call_2", "content": '{"temperature_c": 21}'}],
        "tools": [WEATHER]}, True),
}


def models() -> dict[str, Path]:
    from tests.models import QWEN_CODER, SMOLLM2

    return {"qwen2.5-coder-0.5b": QWEN_CODER.path(), "smollm2-135m": SMOLLM2.path()}


def applies(model_key: str, uses_tools: bool) -> bool:
    """SmolLM2's template has no tools: there igllama writes its own tool prompt, by design."""
    return not uses_tools or model_key.startswith("qwen")


def igllama_prompt(model: Model, body: dict[str, Any]) -> str:
    request = parse_chat(body, Defaults()).request
    return load_template(model, None).render(request.messages, tools=request.offered_tools)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as response:
        return json.loads(response.read())


def start(argv: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"{argv[0]} did not become healthy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="record llama-server's prompts for the test")
    parser.add_argument("--greedy", action="store_true", help="also compare greedy replies (32 tokens)")
    args = parser.parse_args()
    from benchkit.server import free_port
    from reference_server import reference_server_path

    binary = str(reference_server_path())
    record: dict[str, dict[str, str]] = {}
    differences = 0
    for key, path in models().items():
        model = Model(ModelConfig(str(path)))
        port = free_port("127.0.0.1")
        # --no-repack: igllama keeps llama.cpp's plain weight layout (batch-invariant
        # kernels, engine/model.py); with repacked weights (llama-server's default on
        # AVX2) the logits differ by ~0.05 nats and greedy replies part after a while.
        server = start([binary, "-m", str(path), "--jinja", "--port", str(port), "-c", "2048", "-np", "1",
                        "--no-repack"], port)
        ours_port = free_port("127.0.0.1")
        ours = start([sys.executable, "-m", "igllama", "api", str(path), "-p", str(ours_port), "-c", "2048",
                      "-np", "1"], ours_port) if args.greedy else None
        try:
            record[key] = {}
            for name, (body, uses_tools) in CONVERSATIONS.items():
                if not applies(key, uses_tools):
                    continue
                theirs = post(f"http://127.0.0.1:{port}/apply-template", body)["prompt"]
                record[key][name] = theirs
                same = igllama_prompt(model, body) == theirs
                differences += not same
                line = f"{key:20} {name:24} prompt {'same' if same else 'DIFFERENT'}"
                if ours is not None and not uses_tools:
                    greedy = {**body, "temperature": 0, "max_tokens": 32, "cache_prompt": False}
                    a = post(f"http://127.0.0.1:{ours_port}/v1/chat/completions", greedy)
                    b = post(f"http://127.0.0.1:{port}/v1/chat/completions", greedy)
                    same_reply = a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
                    line += f"   greedy reply {'same' if same_reply else 'DIFFERENT'}"
                print(line)
        finally:
            for process in (server, ours):
                if process is not None:
                    process.terminate()
                    process.wait()
            model.close()
    if args.write:
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        print(f"recorded llama-server's prompts in {RECORD.relative_to(REPO)}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
