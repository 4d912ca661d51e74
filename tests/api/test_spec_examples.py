"""The specification's curl, Python and JavaScript examples, run as written (only the port changed),
and the README's JavaScript example, which replaces the specification's."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import REPO, ServerProcess, sse_chunks

SPEC_PORT = "localhost:8080"

CURL_CHAT = """curl http://localhost:8080/v1/chat/completions -H "Content-Type: application/json" -d '{"model":"default","messages":[{"role":"user","content":"Hi"}]}'"""
CURL_STREAM = """curl http://localhost:8080/v1/chat/completions -H "Content-Type: application/json" -d '{"model":"default","messages":[{"role":"user","content":"Hi"}],"stream":true}'"""
CURL_EMBEDDINGS = """curl http://localhost:8080/v1/embeddings -H "Content-Type: application/json" -d '{"model":"default","input":"Hello"}'"""
CURL_HEALTH = "curl http://localhost:8080/health"

PYTHON_NON_STREAMING = '''\
import requests

response = requests.post(
    "http://localhost:8080/v1/chat/completions",
    json={
        "model": "default",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Hello!"}
        ],
        "max_tokens": 100
    }
)

print(response.json()["choices"][0]["message"]["content"])
'''

PYTHON_STREAMING = '''\
import requests

response = requests.post(
    "http://localhost:8080/v1/chat/completions",
    json={"model": "default", "messages": [{"role": "user", "content": "Hello"}], "stream": True},
    stream=True
)

for line in response.iter_lines():
    if line:
        print(line.decode())
'''

JAVASCRIPT_STREAMING = """\
const response = await fetch('http://localhost:8080/v1/chat/completions', {
  method: 'POST',
  headers: { 'Content-Type': 'application/json' },
  body: JSON.stringify({ model: 'default', messages: [{ role: 'user', content: 'Hi' }], stream: true })
});

const reader = response.body.getReader();
const decoder = new TextDecoder();

while (true) {
  const { value, done } = await reader.read();
  if (done) break;
  for (const line of decoder.decode(value).split('\\n')) {
    if (line.startsWith('data: ') && !line.includes('[DONE]')) {
      console.log(JSON.parse(line.slice(6)).choices[0].delta.content);
    }
  }
}
"""


def readme_block(language: str) -> str:
    """The first fenced code block of `language` in README.md."""
    match = re.search(rf"^```{language}\n(.*?)^```$", (REPO / "README.md").read_text(), re.DOTALL | re.MULTILINE)
    assert match, f"README.md has no {language} block"
    return match.group(1)


def on(server: ServerProcess, example: str) -> str:
    assert SPEC_PORT in example
    return example.replace(SPEC_PORT, f"localhost:{server.port}")


def curl(server: ServerProcess, example: str) -> bytes:
    result = subprocess.run(shlex.split(on(server, example)) + ["--silent", "--show-error", "--fail-with-body"],
                            check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_script(command: list[str], script: Path) -> str:
    result = subprocess.run([*command, str(script)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_curl_health(server: ServerProcess) -> None:
    assert json.loads(curl(server, CURL_HEALTH)) == {"status": "ok", "model": "loaded"}


def test_curl_chat(server: ServerProcess) -> None:
    body = json.loads(curl(server, CURL_CHAT))
    assert body["object"] == "chat.completion"
    assert body["model"] == "default"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["finish_reason"] in ("stop", "length")


def test_spec_chat_request_body_is_answered(server: ServerProcess) -> None:
    request = '{"model":"default","messages":[{"role":"user","content":"Hello!"}],"stream":false}'
    body = json.loads(curl(server, f"curl http://localhost:8080/v1/chat/completions -d '{request}'"))
    assert body["choices"][0]["message"]["content"]


def test_curl_streaming(server: ServerProcess) -> None:
    chunks = sse_chunks(curl(server, CURL_STREAM))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "default" for c in chunks)


def test_curl_embeddings(server: ServerProcess) -> None:
    body = json.loads(curl(server, CURL_EMBEDDINGS))
    assert body["object"] == "list"
    [item] = body["data"]
    assert item["object"] == "embedding" and item["index"] == 0 and len(item["embedding"]) == 640
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def test_spec_embeddings_request_body_is_answered(server: ServerProcess) -> None:
    request = '{"model":"default","input":["Hello world"]}'
    body = json.loads(curl(server, f"curl http://localhost:8080/v1/embeddings -d '{request}'"))
    assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 640


def test_python_non_streaming_example(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(on(server, PYTHON_NON_STREAMING))
    printed = run_script([sys.executable], script)
    assert printed.strip()  # the reply's text; a KeyError would have failed the script


def test_python_streaming_example(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(on(server, PYTHON_STREAMING))
    lines = run_script([sys.executable], script).splitlines()
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(line.startswith("data: ") for line in lines)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_streaming_example(server: ServerProcess, tmp_path: Path) -> None:
    # The example splits each read on newlines and parses every data line, so it
    # only works if no frame is ever split across reads.
    script = tmp_path / "example.mjs"
    script.write_text(on(server, JAVASCRIPT_STREAMING))
    lines = run_script(["node"], script).splitlines()
    assert lines[0] == ""  # the role chunk's empty content
    assert lines[-1] == "undefined"  # the finish chunk's empty delta
    assert "".join(lines[1:-1])


# A fetch whose body arrives one byte per read: every line, and the emoji's
# four UTF-8 bytes, are split across reads.
BYTE_BY_BYTE_FETCH = """\
globalThis.fetch = async () => new Response(new ReadableStream({
  start(controller) {
    for (const byte of new TextEncoder().encode(BODY)) controller.enqueue(new Uint8Array([byte]));
    controller.close();
  }
}));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_readme_javascript_example_prints_only_content(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "readme.mjs"
    script.write_text(on(server, readme_block("javascript")))
    printed = run_script(["node"], script)
    assert "undefined" not in printed.splitlines()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_readme_javascript_example_joins_lines_split_across_reads(tmp_path: Path) -> None:
    pieces = ["Hel", "lo \U0001f999", "\n\nBye"]
    deltas = [{"role": "assistant", "content": ""}, *({"content": p} for p in pieces), {}]
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": d, "finish_reason": None if d else "stop"}]} for d in deltas
    ]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    script = tmp_path / "readme.mjs"
    script.write_text(BYTE_BY_BYTE_FETCH.replace("BODY", json.dumps(body)) + readme_block("javascript"))
    assert run_script(["node"], script) == "".join(f"{p}\n" for p in pieces)
