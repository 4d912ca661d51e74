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
from tests.models import SMOLLM2

ERROR = "igllama: error: "


def assert_one_error_line(stderr: str, *words: str) -> None:
    assert stderr.count("\n") == 1 and stderr.startswith(ERROR) and stderr.endswith("\n"), stderr
    for word in words:
        assert word in stderr, stderr


@pytest.fixture(scope="module")
def smollm_path() -> str:
    """A second real GGUF file, beside the demo model."""
    return str(SMOLLM2.path())


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
    (["-ngl", "lots"], ["--gpu-layers", "not a whole number"]),  # (all and auto are llama-server's: -1)
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


def test_two_different_models_are_both_served(model_path: str, smollm_path: str) -> None:
    config = parse_config(["api", model_path, "-m", smollm_path])
    assert (config.model, config.models, config.using_demo) == (model_path, (smollm_path,), False)


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


# -- several models: repeated -m, --models-dir, and the limits on loading them


def refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of a parse_config that must refuse `argv` with exit 2 (in process: no server)."""
    with pytest.raises(SystemExit) as exited:
        parse_config(["api", *argv])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def fake_models(folder: Path, *names: str) -> Path:
    """A models directory of fake .gguf files (the catalog lists them without opening them)."""
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"GGUF")
    return folder


def test_help_lists_the_model_catalog_flags() -> None:
    result = run_cli("api", "--help")
    assert result.returncode == 0
    for flag in ("--models-dir", "--models-max", "--models-idle-unload"):
        assert flag in result.stdout


def test_repeated_models_keep_their_order_and_each_path_once(model_path: str, smollm_path: str) -> None:
    config = parse_config(["api", "-m", smollm_path, "-m", model_path, "-m", smollm_path, model_path])
    assert (config.model, config.models) == (model_path, (smollm_path,))  # MODEL first, then each -m
    other_spelling = f"{Path(model_path).parent}/./{Path(model_path).name}"
    spelled_twice = parse_config(["api", model_path, "-m", other_spelling])
    assert (spelled_twice.model, spelled_twice.models) == (model_path, ())


@pytest.mark.parametrize("position", [0, 1, 2], ids=["MODEL", "first -m", "second -m"])
@pytest.mark.parametrize("kind", ["missing", "not GGUF"])
def test_every_model_file_is_checked(model_path: str, smollm_path: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], position: int, kind: str) -> None:
    bad = tmp_path / "bad.gguf"
    if kind == "not GGUF":
        bad.write_text("<html>not a model</html>")
    files = [model_path, smollm_path]
    files.insert(position, str(bad))
    stderr = refusal([files[0], "-m", files[1], "-m", files[2]], capsys)
    assert_one_error_line(stderr, str(bad), "model file not found" if kind == "missing" else "not a GGUF file")


def test_a_models_dir_alone_serves_its_models_without_the_demo(tmp_path: Path) -> None:
    folder = fake_models(tmp_path / "models", "a.gguf", "b.gguf")
    config = parse_config(["api", "--models-dir", str(folder)])
    assert (config.model, config.models, config.models_dir, config.using_demo) == ("", (), str(folder), False)


def test_a_models_dir_with_a_model_file(model_path: str, tmp_path: Path) -> None:
    folder = fake_models(tmp_path / "models", "a.gguf")
    config = parse_config(["api", "-m", model_path, "--models-dir", str(folder)])
    assert (config.model, config.models, config.models_dir) == (model_path, (), str(folder))


def test_one_model_keeps_the_single_model_defaults(model_path: str) -> None:
    config = parse_config(["api", model_path, "--alias", "mine"])
    assert (config.models, config.models_dir, config.models_max, config.models_idle_unload) == ((), None, 0, 0.0)
    assert config.alias == "mine"


def test_models_max_and_idle_unload_values(tmp_path: Path) -> None:
    folder = fake_models(tmp_path / "models", "a.gguf")
    config = parse_config(["api", "--models-dir", str(folder), "--models-max", "2", "--models-idle-unload", "300"])
    assert (config.models_max, config.models_idle_unload) == (2, 300.0)


BAD_CATALOG_FLAGS: list[tuple[list[str], list[str]]] = [
    (["--models-max", "-1"], ["--models-max must be 0 (no limit) or more, not -1"]),
    (["--models-max", "two"], ["--models-max", "not a whole number: 'two'"]),
    (["--models-idle-unload", "-5"], ["--models-idle-unload", "between 0 and 86400 seconds"]),
    (["--models-idle-unload", "soon"], ["--models-idle-unload", "not a number of seconds"]),
    (["--models-dir"], ["--models-dir", "expected one argument"]),
]


@pytest.mark.parametrize(("flags", "words"), BAD_CATALOG_FLAGS, ids=[" ".join(f) for f, _ in BAD_CATALOG_FLAGS])
def test_a_bad_catalog_flag_is_one_line_and_exit_2(model_path: str, capsys: pytest.CaptureFixture[str],
                                                   flags: list[str], words: list[str]) -> None:
    assert_one_error_line(refusal([model_path, *flags], capsys), *words)


def test_alias_with_several_models_is_refused(model_path: str, smollm_path: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = fake_models(tmp_path / "models", "a.gguf")
    for argv in ([model_path, "-m", smollm_path, "--alias", "x"], ["--models-dir", str(folder), "-a", "x"]):
        stderr = refusal(argv, capsys)
        assert_one_error_line(stderr, "--alias names one model; with several, name them in DIR/models.toml")


def test_a_bad_models_dir_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_error_line(refusal(["--models-dir", str(tmp_path / "nope")], capsys),
                          f"--models-dir {tmp_path / 'nope'}: not found")
    assert_one_error_line(refusal(["--models-dir", str(tmp_path)], capsys), f"no .gguf files in {tmp_path}")
    folder = fake_models(tmp_path / "models", "a.gguf")
    (folder / "models.toml").write_text('["a.gguf"]\nctx_size = 0\n')
    assert_one_error_line(refusal(["--models-dir", str(folder)], capsys),
                          f'{folder / "models.toml"} ["a.gguf"]: ctx_size must be a whole number of at least 1')


def test_a_bad_models_dir_from_the_command_line(tmp_path: Path) -> None:
    result = run_cli("api", "--models-dir", str(tmp_path / "nope"))
    assert result.returncode == 2 and result.stdout == ""
    assert_one_error_line(result.stderr, f"--models-dir {tmp_path / 'nope'}: not found")
