"""`igllama api` as a user runs it: help, every refusal of the command line, flags reaching
llama.cpp, starting on the demo model, and stopping on a signal."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

import igllama.engine.model as engine_model
from igllama.cli import parse_config
from igllama.library import engine_config
from tests.api.conftest import (
    ONE_THREAD,
    REPO,
    TIMEOUT,
    ServerProcess,
    igllama_command,
    run_cli,
    start_process,
    user,
)

ERROR = "igllama: error: "


def assert_one_error_line(stderr: str, *words: str) -> None:
    assert stderr.count("\n") == 1 and stderr.startswith(ERROR) and stderr.endswith("\n"), stderr
    for word in words:
        assert word in stderr, stderr


# -- help


def test_help_lists_the_flags() -> None:
    result = run_cli("api", "--help")
    assert result.returncode == 0 and result.stderr == ""
    for flag in ("--model", "--host", "--port", "--ctx-size", "--max-tokens", "--gpu-layers", "-ngl", "--threads",
                 "--threads-batch", "--mlock", "--no-think", "--temp", "--parallel", "--api-key", "--alias",
                 "--chat-template"):
        assert flag in result.stdout


def test_top_level_help_and_version() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "api" in top.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"igllama \d+\.\d+\.\d+\n", version.stdout)


# -- refusals: one line on stderr, exit 2, before anything is bound or loaded


BAD_FLAGS: list[tuple[list[str], list[str]]] = [
    (["--bogus"], ["unrecognized arguments: --bogus"]),
    (["-np", "8", "-b", "4"], ["--parallel (8) cannot exceed --batch-size (4)"]),
    (["-p", "70000"], ["--port", "between 0 and 65535"]),
    (["-p", "http"], ["--port", "not a whole number: 'http'"]),
    (["-c", "0"], ["--ctx-size", "at least 1"]),
    (["-n", "-5"], ["--max-tokens", "at least 1"]),
    (["-n", "many"], ["--max-tokens", "not a whole number"]),
    (["-ngl", "-2"], ["--gpu-layers must be -1 (all) or more, not -2"]),
    (["-ngl", "all"], ["--gpu-layers", "not a whole number"]),
    (["-t", "0"], ["--threads", "at least 1"]),
    (["-np", "0"], ["--parallel", "at least 1"]),
    (["-b", "x"], ["--batch-size", "not a whole number"]),
    (["--temp", "3"], ["--temp", "between 0 and 2"]),
    (["--temp", "warm"], ["--temp", "not a number"]),
    (["--port"], ["--port", "expected one argument"]),
    (["--chat-template", "no-such-format"], ["--chat-template 'no-such-format'", "built-ins: ", "gemma"]),
]


@pytest.mark.parametrize(("flags", "words"), BAD_FLAGS, ids=[" ".join(flags) for flags, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_and_exit_2(model_path: str, flags: list[str], words: list[str]) -> None:
    result = run_cli("api", model_path, *flags)
    assert result.returncode == 2
    assert result.stdout == ""
    assert_one_error_line(result.stderr, *words)


def test_missing_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    result = run_cli("api", str(missing))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"model file not found: {missing}")


def test_a_file_that_is_not_gguf(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>not a model</html>")
    result = run_cli("api", "--model", str(fake))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "not a GGUF file", str(fake))


def test_a_directory_is_not_a_model(tmp_path: Path) -> None:
    result = run_cli("api", str(tmp_path))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "not a file", str(tmp_path))


def test_two_different_models(model_path: str, tmp_path: Path) -> None:
    result = run_cli("api", model_path, "-m", str(tmp_path / "other.gguf"))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "two models given")


@pytest.mark.parametrize("argv", [[], ["serve"]], ids=["no-command", "unknown-command"])
def test_no_or_unknown_command(argv: list[str]) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2
    assert_one_error_line(result.stderr)


# -- refusals found when starting: exit 1


def test_port_in_use_is_one_line_and_exit_1(model_path: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("api", model_path, "-p", str(port))
    assert result.returncode == 1
    assert result.stderr == f"{ERROR}cannot listen on 127.0.0.1:{port}: address already in use\n"


def test_a_gguf_llama_cpp_cannot_load_is_exit_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 60)
    result = run_cli("api", str(broken), "-p", "0")
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(ERROR) and str(broken) in last, result.stderr
    assert "Traceback" not in result.stderr


def test_a_chat_template_file_with_a_syntax_error_is_exit_1(model_path: str, tmp_path: Path) -> None:
    template = tmp_path / "bad.jinja"
    template.write_text("{% for message in messages %}{{ message.content }")
    result = run_cli("api", model_path, "-p", "0", "--chat-template", str(template), *ONE_THREAD)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(f"{ERROR}chat template has a syntax error"), result.stderr
    assert "Traceback" not in result.stderr


# -- flags reaching llama.cpp


@pytest.mark.parametrize(("flags", "expected"), [([], 0), (["--gpu-layers", "35"], 35), (["-ngl", "-1"], -1)])
def test_gpu_layers_reach_the_model_params(model_path: str, flags: list[str], expected: int) -> None:
    config = engine_config(parse_config(["api", model_path, *flags]))
    assert config.model.n_gpu_layers == expected
    assert engine_model.model_params(config.model).n_gpu_layers == expected


def test_flags_reach_the_engine_config(model_path: str) -> None:
    config = engine_config(parse_config(
        ["api", "-m", model_path, "-c", "1024", "-t", "3", "-tb", "5", "-np", "2", "-b", "128", "--mlock",
         "--no-think", "--chat-template", "chatml"]
    ))
    assert (config.n_ctx, config.n_threads, config.n_threads_batch, config.n_slots, config.n_batch) == (
        1024, 3, 5, 2, 128
    )
    assert config.model.mlock and config.no_think and config.chat_template == "chatml"
    assert engine_model.model_params(config.model).load_mode == engine_model.llama.LLAMA_LOAD_MODE_MMAP_MLOCK


@pytest.mark.parametrize(("flags", "repacked"), [([], False), (["--repack"], True)])
def test_repack_reaches_the_model_params(model_path: str, flags: list[str], repacked: bool) -> None:
    config = engine_config(parse_config(["api", model_path, *flags]))
    assert engine_model.model_params(config.model).use_extra_bufts is repacked


def test_defaults_are_the_specifications(model_path: str) -> None:
    config = parse_config(["api", model_path])
    assert (config.host, config.port, config.ctx_size, config.max_tokens, config.gpu_layers, config.temp) == (
        "127.0.0.1", 8080, 4096, 2048, 0, 0.7
    )
    assert not config.mlock and not config.no_think and config.api_key is None


# -- running


def test_no_model_serves_the_demo_model(server: ServerProcess) -> None:
    # The shared server is started without a MODEL argument.
    banner = server.stderr()
    assert "(the bundled demo model)" in banner
    assert "id       gemma-3-270m-q4_k_m.gguf" in banner
    assert re.search(r"ready in \d+\.\d s: http://127\.0\.0\.1:\d+/v1", banner)
    models = requests.get(f"{server.base_url}/models", timeout=TIMEOUT).json()
    assert [m["id"] for m in models["data"]] == ["gemma-3-270m-q4_k_m.gguf"]


def test_all_gpu_layers_on_a_cpu_build_serves_then_stops_on_sigterm(model_path: str, tmp_path: Path) -> None:
    running = start_process(["-m", model_path, "-ngl", "-1", "-c", "2048", "-np", "1", *ONE_THREAD],
                            tmp_path / "stderr.log")
    try:
        assert "gpu layers -1" in running.stderr()
        reply = requests.post(f"{running.base_url}/chat/completions", json=user("Hi", 2), timeout=TIMEOUT)
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        status = running.stop(signal.SIGTERM)
    assert status == 0, running.stderr()
    assert "Traceback" not in running.stderr()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_right_after_the_banner_stops_cleanly(model_path: str, tmp_path: Path, signum: int) -> None:
    # The banner says the port is bound: from then on Ctrl-C must be a clean stop, even
    # while the model is still loading.
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(igllama_command("api", model_path, "-p", "0", *ONE_THREAD), cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + TIMEOUT
        while "OpenAI-compatible API on" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.002)
        process.send_signal(signum)
        status = process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert status == 0, log_path.read_text()
    assert "Traceback" not in log_path.read_text()
