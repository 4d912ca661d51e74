"""The specification's curl, Python and JavaScript examples, run as written (only the port changed),
the JavaScript example of docs/clients.md, which replaces the specification's, and every shell
command of README.md and docs/*.md: each one is run against a real server or skipped with its
reason, so an example that no longer works fails here. The docs' links are checked too."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import (
    ONE_THREAD,
    REPO,
    STARTUP_TIMEOUT,
    ServerProcess,
    igllama_command,
    sse_chunks,
)

# Where the examples' server listens: the specification's and the README's "localhost:8080",
# some of docs/ "127.0.0.1:8080".
EXAMPLE_ADDRESS = re.compile(r"\b(localhost|127\.0\.0\.1):8080\b")

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


def doc_block(doc: str, language: str) -> str:
    """The first fenced code block of `language` in `doc` (a path under the repository)."""
    match = re.search(rf"^```{language}\n(.*?)^```$", (REPO / doc).read_text(), re.DOTALL | re.MULTILINE)
    assert match, f"{doc} has no {language} block"
    return match.group(1)


def on(server: ServerProcess, example: str) -> str:
    assert EXAMPLE_ADDRESS.search(example), example
    return EXAMPLE_ADDRESS.sub(rf"\1:{server.port}", example)


def curl(server: ServerProcess, example: str, cwd: Path = REPO) -> bytes:
    """Run a curl example on `server`; curl exits 22 if the status is an error."""
    result = subprocess.run([*shlex.split(on(server, example), comments=True), "--silent", "--show-error",
                             "--fail-with-body"], cwd=cwd, check=False, capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout[:300], result.stderr)
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
def test_docs_javascript_example_prints_only_content(server: ServerProcess, tmp_path: Path) -> None:
    script = tmp_path / "clients.mjs"
    script.write_text(on(server, doc_block("docs/clients.md", "javascript")))
    printed = run_script(["node"], script)
    assert "undefined" not in printed.splitlines()


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_docs_javascript_example_joins_lines_split_across_reads(tmp_path: Path) -> None:
    pieces = ["Hel", "lo \U0001f999", "\n\nBye"]
    deltas = [{"role": "assistant", "content": ""}, *({"content": p} for p in pieces), {}]
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": d, "finish_reason": None if d else "stop"}]} for d in deltas
    ]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
    body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    script = tmp_path / "clients.mjs"
    example = doc_block("docs/clients.md", "javascript")
    script.write_text(BYTE_BY_BYTE_FETCH.replace("BODY", json.dumps(body)) + example)
    assert run_script(["node"], script) == "".join(f"{p}\n" for p in pieces)


# -- every shell command of the docs

DOCS = ("README.md", *(f"docs/{doc.name}" for doc in sorted((REPO / "docs").glob("*.md"))))
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
SHELL = ("bash", "sh", "shell", "console")

# The commands no test runs, by how they start, each with its reason.
NOT_RUN = {
    "bash scripts/serve-demo.sh": "installs into .venv, then serves on the fixed port 8080 until stopped",
    "bash scripts/test.sh": "installs into .venv, then runs this whole suite",
    ".venv/bin/igllama api ": "starts a server on a fixed port for a model.gguf that is not here",
    "igllama api ": "starts a server on a fixed port for a model or folder that is not here",
    ".venv/bin/python scripts/soak.py": "a soak load for --duration 600 seconds",
    ".venv/bin/python scripts/reference_server.py": "builds llama-server, ~7 minutes the first time",
    ".venv/bin/python scripts/bench": "a benchmark: minutes on 2 cores",
    "bash scripts/scale-out.sh": "tests/test_scale_out.py runs it where nginx is installed",
    'curl -X POST "http://localhost:8080/slots/': "needs --slot-save-path; tests/api/test_slot_actions.py runs it",
    "curl http://localhost:8080/lora-adapters -d": "needs --lora; tests/api/test_lora_adapters.py runs it",
    "curl http://localhost:8080/v1/chat/completions -d '{\"lora\"": "needs --lora; tests/api/test_lora_adapters.py "
                                                                     "runs it",
    "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval ": "lm-eval against a server on the fixed port 8080: "
    "tests/api/test_lm_eval.py runs the same task on a free port",
}
# The HTTPS recipe of docs/operating.md runs whole: its server start is the exception to NOT_RUN.
HTTPS_SERVER = "igllama api model.gguf --ssl-cert-file"


@dataclass(frozen=True)
class DocCommand:
    where: str  # file:line
    text: str  # continuation lines joined


def doc_commands() -> list[DocCommand]:
    """Every command of the ```bash (or sh) blocks of the docs, comments and blank lines left out."""
    commands = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for fence in FENCE.finditer(text):
            if fence.group(1) not in SHELL:
                continue
            first = text.count("\n", 0, fence.start(2)) + 1
            pending, start = "", 0
            for offset, line in enumerate(fence.group(2).splitlines()):
                if not pending and (not line.strip() or line.lstrip().startswith("#")):
                    continue
                start = start or first + offset
                if line.endswith("\\"):
                    pending += line[:-1]
                    continue
                commands.append(DocCommand(f"{doc}:{start}", (pending + line).strip()))
                pending, start = "", 0
    return commands


def not_run_reason(command: str) -> str | None:
    if command.startswith(HTTPS_SERVER):
        return None
    return next((why for start, why in NOT_RUN.items() if command.startswith(start)), None)


def command_cases() -> list[Any]:
    """Each command a case; those in NOT_RUN skipped, their place, reason and text in the report."""
    cases = []
    for command in doc_commands():
        why = not_run_reason(command.text)
        skip = [pytest.mark.skip(reason=f"{command.where} {why}: `{command.text}`")] if why else []
        cases.append(pytest.param(command, id=command.where, marks=skip))
    return cases


@dataclass
class HTTPSRecipe:
    folder: Path  # where the certificate and key were made
    server: ServerProcess


def recipe_command(start: str) -> list[str]:
    [command] = [c.text for c in doc_commands() if c.text.startswith(start)]
    return shlex.split(command, comments=True)


@pytest.fixture(scope="module")
def https_recipe(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPSRecipe]:
    """docs/operating.md's self-signed certificate and HTTPS server, the demo model in place of
    model.gguf and a free port in place of 8080."""
    folder = tmp_path_factory.mktemp("https-recipe")
    made = subprocess.run(recipe_command("openssl req"), cwd=folder, capture_output=True, timeout=60,
                          check=False)
    assert made.returncode == 0, made.stderr
    serve = recipe_command(HTTPS_SERVER)
    assert serve[:3] == ["igllama", "api", "model.gguf"]
    log_path = folder / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(igllama_command("api", model_path, *serve[3:], "-p", "0", *ONE_THREAD),
                                   cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=log)
    ready = re.compile(r"ready in \d+\.\d s: https://127\.0\.0\.1:(\d+)/v1")
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not (match := ready.search(log_path.read_text())):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            pytest.fail(f"the HTTPS recipe's server did not start:\n{log_path.read_text()}")
        time.sleep(0.05)
    server = ServerProcess(process, int(match.group(1)), log_path)
    yield HTTPSRecipe(folder, server)
    server.stop()


def assert_answered(output: bytes) -> None:
    """An SSE stream ends with [DONE]; a JSON body is not an error; anything else is not empty."""
    if output.startswith(b"data: "):
        sse_chunks(output)
    elif output.startswith(b"{"):
        assert "error" not in json.loads(output), output[:300]
    else:
        assert output.strip()


@pytest.mark.parametrize("command", command_cases())
def test_doc_command(command: DocCommand, request: pytest.FixtureRequest) -> None:
    text = command.text
    if text.startswith("openssl req"):
        folder = request.getfixturevalue("https_recipe").folder
        assert (folder / "cert.pem").is_file() and (folder / "key.pem").is_file()
    elif text.startswith(HTTPS_SERVER):
        recipe = request.getfixturevalue("https_recipe")
        assert recipe.server.process.poll() is None
        banner = recipe.server.stderr()
        assert f"OpenAI-compatible API on https://127.0.0.1:{recipe.server.port}" in banner
    elif text.startswith("curl ") and EXAMPLE_ADDRESS.search(text):
        if "https://" in text:
            recipe = request.getfixturevalue("https_recipe")
            server, folder = recipe.server, recipe.folder
        else:
            # The demo model has no fill-in-the-middle tokens: a `suffix` needs the code model.
            server = request.getfixturevalue("qwen" if '"suffix"' in text else "server")
            folder = REPO
        assert_answered(curl(server, text, cwd=folder))
    else:
        pytest.fail(f"{command.where}: no test runs `{text}`: run it here, or give NOT_RUN its reason")


def test_the_readme_has_a_request_in_each_dialect_that_runs() -> None:
    run = [c.text for c in doc_commands()
           if c.where.startswith("README.md:") and not_run_reason(c.text) is None]
    for path in ("/v1/chat/completions", "/v1/messages", "/api/chat", "/tokenize"):
        assert any(f":8080{path} " in command for command in run), path


# -- the docs' links

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def outside_fences(text: str) -> list[str]:
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = [line.lstrip("#").strip() for line in outside_fences(path.read_text()) if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("doc", DOCS)
def test_doc_links_resolve(doc: str) -> None:
    path = REPO / doc
    for line in outside_fences(path.read_text()):
        for target in LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # http(s)://, mailto:
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.is_file(), f"{doc}: {target} names no file"
            if anchor:
                assert anchor in anchors(linked), f"{doc}: {target} names no heading of {linked.name}"
