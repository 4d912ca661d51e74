"""Real servers on free ports with the real demo model (tier 3 of STYLE.md).

Two ways to run one:

- `start_process` runs the product as a user does (`python -m igllama api
  ... -p 0`) and reads the bound port from its banner. The session-wide
  `server` fixture is one such process; tests share it.
- `BackgroundLoop` runs an in-process `Server` on its own uvloop thread, for
  the tests that must see inside (the engine's scheduler after a disconnect)
  or control the moment the model is "loaded".
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import pytest
import requests
import uvloop

from tests.models import QWEN_CODER, SMOLLM2

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 120.0
TIMEOUT = 60.0  # per HTTP request: generous, the machine's cores are shared
MAX_TOKENS_CAP = 16  # the shared server's --max-tokens
# Gemma 3's end-of-generation tokens (<eos>, <end_of_turn>, </s>): banned with
# logit_bias, the model can only stop at max_tokens.
NEVER_STOP = {"1": -100, "106": -100, "212": -100}
# The test machine's two cores are shared with other work: one llama.cpp thread
# is several times faster there than two spinning at a barrier for a core.
ONE_THREAD = ["-t", "1", "-tb", "1"]

T = TypeVar("T")


@dataclass
class ServerProcess:
    """`python -m igllama api ...` running in a child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `signum`, wait for the exit, return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def igllama_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "igllama", *args]


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run `python -m igllama ARGS` to completion (for the ones that exit at once)."""
    return subprocess.run(igllama_command(*args), check=False, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def start_process(args: list[str], log_path: Path) -> ServerProcess:
    """Start `igllama api ARGS -p 0` and wait until /health answers 200.

    stderr goes to a file rather than a pipe: the access log writes a line per
    request, and a pipe nobody reads would block the server when it fills.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            igllama_command("api", *args, "-p", "0"), cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log,
        )
    deadline = time.monotonic() + STARTUP_TIMEOUT
    port = None
    try:
        while port is None:
            match = re.search(r"OpenAI-compatible API on http://127\.0\.0\.1:(\d+)", log_path.read_text())
            if match:
                port = int(match.group(1))
            elif process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"igllama api did not start:\n{log_path.read_text()}")
            else:
                time.sleep(0.05)
        server = ServerProcess(process, port, log_path)
        wait_until(lambda: health_status(server.url) == 200, STARTUP_TIMEOUT,
                   lambda: f"the model never loaded:\n{server.stderr()}")
        return server
    except BaseException:
        process.kill()
        process.wait()
        raise


# llama-server's repacked weights (its default) take llama.cpp's AMX kernels on an
# AMX Xeon, and in some VMs those die with an illegal instruction before the first
# token; the tests beside llama-server compare its API, not its kernels.
REFERENCE_FLAGS = ("--no-repack",)


def reference_binary() -> Path:
    """The reference llama-server that scripts/reference_server.py builds (a skip without it)."""
    spec = importlib.util.spec_from_file_location("reference_server", REPO / "scripts" / "reference_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    binary: Path = module.binary_in(module.cache_dir(module.installed_version()))
    if not binary.is_file():
        pytest.skip("no reference llama-server: build it with scripts/reference_server.py (~5-12 minutes)")
    return binary


def health_status(url: str) -> int | None:
    try:
        return requests.get(f"{url}/health", timeout=5).status_code
    except requests.ConnectionError:
        return None


def wait_until(condition: Callable[[], bool], timeout: float, why: Callable[[], str] | str = "timed out") -> None:
    """Poll `condition` every 20 ms; fail the test with `why` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(why() if callable(why) else why)
        time.sleep(0.02)


@pytest.fixture(scope="session")
def server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The shared server: `igllama api` with no model (so the demo model), greedy by default.

    `model_path` is requested so the session skips cleanly without the demo package.
    """
    log_path = tmp_path_factory.mktemp("server") / "stderr.log"
    running = start_process(["-c", "2048", "-np", "4", "-n", str(MAX_TOKENS_CAP), "--temp", "0", *ONE_THREAD], log_path)
    yield running
    running.stop()


def serve_instruct_model(model: Path, tmp: Path) -> ServerProcess:
    """A server for one of the instruct models of tests/models.py, greedy by default."""
    return start_process([str(model), "-c", "2048", "-np", "2", "-n", "64", "--temp", "0", *ONE_THREAD], tmp / "log")


@pytest.fixture(scope="session")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Qwen2.5-Coder-0.5B-Instruct: a Jinja template with tools (Hermes form), FIM tokens."""
    server = serve_instruct_model(QWEN_CODER.path(), tmp_path_factory.mktemp("qwen"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smollm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """SmolLM2-135M-Instruct: a ChatML template that knows no tools."""
    server = serve_instruct_model(SMOLLM2.path(), tmp_path_factory.mktemp("smollm"))
    yield server
    server.stop()


def chat(url: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    """POST a chat completion with the `requests` library."""
    return requests.post(f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT, **kwargs)


def user(text: str, max_tokens: int = 8, **fields: Any) -> dict[str, Any]:
    """A one-message chat request body."""
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **fields}


SSE_BODY = re.compile(rb"(?:(?:data: [^\n]+|: ping)\n\n)+")


def sse_payloads(body: bytes) -> list[bytes]:
    """The payloads of an SSE body, checking that it is nothing but `data: <payload>\\n\\n` frames
    (and the `: ping` comments a stream gets when it is silent for --sse-ping seconds)."""
    assert SSE_BODY.fullmatch(body), f"not a sequence of 'data: ...\\n\\n' frames: {body[:300]!r}"
    return [frame[len(b"data: "):] for frame in body.split(b"\n\n")[:-1] if frame != b": ping"]


def sse_chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of a streamed completion, after checking it ends with `data: [DONE]`."""
    payloads = sse_payloads(body)
    assert payloads[-1] == b"[DONE]"
    return [orjson.loads(p) for p in payloads[:-1]]


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    """The OpenAI-shaped error of a response, after checking its status and shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_cors(response: requests.Response) -> None:
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["access-control-allow-methods"] == "GET, POST, OPTIONS"


class BackgroundLoop:
    """A uvloop event loop in its own thread, for in-process servers.

    An Engine serves one event loop at a time and pytest-asyncio gives each
    test its own loop, so in-process servers live here for the whole module.
    """

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="api-test-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


# -- prompt log-probabilities (test_prompt_logprobs.py, test_lm_eval.py)

Reference = Callable[[list[int]], np.ndarray]


@pytest.fixture(scope="session")
def scoring_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("scoring") / "stderr.log"
    running = start_process([model_path, "-c", "2048", "-np", "4", "-n", "16", "--temp", "0", *ONE_THREAD],
                            log_path)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def reference(model_path: str) -> Iterator[Reference]:
    """Log-softmax rows of llama.cpp's logits for a token list, computed apart from igllama by
    llama-cpp-python's high-level class (the only place it is used), in float64."""
    import llama_cpp.llama_cpp as low_level
    from llama_cpp import Llama

    default_params = low_level.llama_model_default_params

    def plain_layouts() -> Any:
        # The weight layout igllama loads by default (model.py): llama.cpp's repacked layouts
        # run other kernels, whose logits differ by up to ~0.2 nats on this model and, worse,
        # depend on how many rows share a batch, where the server batches several prompts.
        params = default_params()
        params.use_extra_bufts = False
        return params

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(low_level, "llama_model_default_params", plain_layouts)
        # One thread, as the server; flash attention on, as igllama's context gets it (llama.cpp's "auto").
        llm = Llama(model_path, logits_all=True, n_ctx=512, n_threads=1, n_threads_batch=1, flash_attn=True,
                    verbose=False)

    def log_softmax(tokens: list[int]) -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        logits = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        peaks = logits.max(axis=1, keepdims=True)
        return logits - peaks - np.log(np.exp(logits - peaks).sum(axis=1, keepdims=True))

    yield log_softmax
    llm.close()
