"""llama-server's command line on `igllama api` (igllama/llama_server_flags.py): every flag of
the reference llama-server's --help is mapped, accepted as changing nothing, or refused in
one line; mapped flags land in ServerConfig; and a few real servers show the behaviour
(several hosts, CORS, a default seed, a default reply length, sleeping when idle)."""

from __future__ import annotations

import argparse
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from igllama import llama_server_flags as table
from igllama.cli import build_parser, parse_config
from igllama.config import ServerConfig
from igllama.http.cors import ANY_ORIGIN, CorsError, CorsPolicy
from igllama.http.response import CORS_HEADERS
from igllama.library import engine_config
from tests.api.conftest import (
    NEVER_STOP,
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    reference_binary,
    start_process,
    wait_until,
)

ERROR = "igllama: error: "
# (values tried on flags accepted only at some values, and one no such flag takes)
SAMPLE_VALUES = ("0", "-1", "1", "2", "50", "64", "auto", "default", "*")
UNUSUAL_VALUE = "12345"


def reference_spellings() -> set[str]:
    """Every spelling of every flag the reference llama-server's --help lists."""
    help_text = subprocess.run([str(reference_binary()), "--help"], capture_output=True, text=True, timeout=60,
                               check=False).stdout
    spellings: set[str] = set()
    for line in help_text.splitlines():
        if not line.startswith("-") or line.startswith("-----"):
            continue
        # The flags fill the first 40 columns, the description the rest; longer flags get the line.
        spec = line[:40] if len(line) > 40 and line[38:40] == "  " else line
        spellings.update(re.findall(r"(?<![\w-])(-{1,2}[A-Za-z][\w.-]*)", spec))
    assert len(spellings) > 300, "the --help format changed: this parse no longer finds the flags"
    return spellings


def api_parser() -> argparse.ArgumentParser:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    api: argparse.ArgumentParser = commands.choices["api"]
    return api


def parsed(model_path: str, *flags: str) -> ServerConfig:
    return parse_config(["api", model_path, *flags])


def refusal(model_path: str, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    """The one stderr line of a command line refused with exit 2 (in process: nothing bound)."""
    with pytest.raises(SystemExit) as exited:
        parse_config(["api", model_path, *flags])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(ERROR), err
    return err


def spellings_of(kind: table.Kind) -> list[str]:
    return [spelling for flag in table.FLAGS if flag.kind is kind for spelling in flag.spellings]


def accepted_value(flag: table.Flag) -> str:
    if flag.only is None:
        return "1"
    return next(value for value in SAMPLE_VALUES if flag.only(value))


# -- the table


def test_every_flag_of_the_reference_help_is_in_the_table() -> None:
    spellings = reference_spellings()
    unclassified = sorted(spellings - set(table.BY_SPELLING) - set(table.ELSEWHERE))
    assert unclassified == []
    stale = sorted(set(table.BY_SPELLING) - spellings)
    assert stale == [], "the table names flags llama-server does not have"


def test_a_spelling_is_in_one_row_only() -> None:
    rows = [spelling for flag in table.FLAGS for spelling in flag.spellings]
    assert len(rows) == len(set(rows))
    assert not set(rows) & set(table.ELSEWHERE)


def test_every_row_says_why() -> None:
    for flag in table.FLAGS:
        assert flag.note and "\n" not in flag.note, flag
        if flag.only is not None:
            assert flag.otherwise and flag.kind is table.Kind.IGNORED, flag


def test_every_spelling_is_an_option_of_igllama_api() -> None:
    options = api_parser()._option_string_actions
    missing = [spelling for spelling in table.BY_SPELLING if spelling not in options]
    assert missing == []


@pytest.mark.parametrize("spelling", spellings_of(table.Kind.REFUSED))
def test_a_refused_flag_exits_2_with_one_line_naming_it(model_path: str, capsys: pytest.CaptureFixture[str],
                                                        spelling: str) -> None:
    flag = table.BY_SPELLING[spelling]
    written = [[spelling], [spelling, "x"], [f"{spelling}=x"]] if flag.takes_value else [[spelling]]
    for argv in written:
        err = refusal(model_path, capsys, *argv)
        assert f"{ERROR}{spelling}: " in err and flag.note in err


@pytest.mark.parametrize("spelling", spellings_of(table.Kind.IGNORED))
def test_an_ignored_flag_changes_nothing(model_path: str, capsys: pytest.CaptureFixture[str], spelling: str) -> None:
    flag = table.BY_SPELLING[spelling]
    argv = [spelling, accepted_value(flag)] if flag.takes_value else [spelling]
    assert parsed(model_path, *argv) == parsed(model_path)
    if flag.only is not None:
        err = refusal(model_path, capsys, spelling, UNUSUAL_VALUE)
        assert f"{spelling} {UNUSUAL_VALUE}: " in err and flag.otherwise in err


def test_a_mapped_flag_is_its_own_option_not_the_tables_action() -> None:
    options = api_parser()._option_string_actions
    for spelling in spellings_of(table.Kind.MAPPED):
        assert type(options[spelling]).__name__ not in ("_Refuse", "_Ignore"), spelling


# -- mapped flags land in ServerConfig


MAPPED: list[tuple[list[str], dict[str, Any]]] = [
    (["-s", "42"], {"seed": 42}),
    (["--seed", "-1"], {"seed": None}),
    (["--n-predict", "32"], {"max_tokens": 32}),
    (["--predict", "-1", "-c", "1024"], {"max_tokens": 1024, "ctx_size": 1024}),
    (["-n", "-2", "-c", "512"], {"max_tokens": 512}),
    (["-ub", "64"], {"ubatch_size": 64}),
    (["--ubatch-size", "128"], {"ubatch_size": 128}),
    (["-fa", "off"], {"flash_attn": "off"}),
    (["--flash-attn", "on"], {"flash_attn": "on"}),
    (["--pooling", "cls"], {"pooling": "cls"}),
    (["--top-k", "5", "--top-p", "0.5", "--min-p", "0.1"], {"top_k": 5, "top_p": 0.5, "min_p": 0.1}),
    (["--repeat-penalty", "1.1", "--presence-penalty", "0.5", "--frequency-penalty", "-0.5"],
     {"repeat_penalty": 1.1, "presence_penalty": 0.5, "frequency_penalty": -0.5}),
    (["--temperature", "0.2"], {"temp": 0.2}),
    (["-np", "-1"], {"parallel": 4}),
    (["-t", "-1", "-tb", "-1"], {"threads": 0, "threads_batch": 0}),
    (["-ngl", "all"], {"gpu_layers": -1}),
    (["--n-gpu-layers", "auto"], {"gpu_layers": -1}),
    (["-cram", "64"], {"cache_ram": 64}),
    (["--repack", "-nr"], {"repack": False}),
    (["--no-repack", "--repack"], {"repack": True}),
    (["--no-slots"], {"slots": False}),
    (["--no-slots", "--slots"], {"slots": True}),
    (["--spec-type", "none"], {"spec": False}),
    (["--spec", "off", "--spec-type", "ngram-mod,ngram-simple"], {"spec": True}),
    (["--spec", "off", "--spec-default"], {"spec": True}),
    (["--spec-draft-n-max", "8"], {"spec_draft_max": 8}),
    (["--sse-ping-interval", "-1"], {"sse_ping": 0.0}),
    (["--sse-ping-interval", "30"], {"sse_ping": 30.0}),
    (["-lm", "mlock"], {"mlock": True}),
    (["--load-mode", "mmap"], {"mlock": False}),
    (["-rea", "off"], {"no_think": True}),
    (["--reasoning", "auto"], {"no_think": False}),
    (["--no-ui"], {"ui": False}),
    (["--no-webui"], {"ui": False}),
    (["--no-ui", "--ui"], {"ui": True}),
    (["--sleep-idle-seconds", "30"], {"models_idle_unload": 30.0}),
    (["--sleep-idle-seconds", "-1"], {"models_idle_unload": 0.0}),
    (["--host", "127.0.0.1,::1", "--port", "9000"], {"host": "127.0.0.1,::1", "port": 9000}),
    (["--cors-origins", "http://page.example,localhost"], {"cors_origins": "http://page.example,localhost"}),
    (["--cors-methods", "GET, POST"], {"cors_methods": "GET, POST"}),
    (["--cors-credentials"], {"cors_credentials": True}),
    (["--cors-credentials", "--no-cors-credentials"], {"cors_credentials": False}),
    (["--log-verbose"], {"verbose": True}),
    (["--metrics", "--alias", "mine"], {"metrics": True, "alias": "mine"}),
    (["-c", "1024", "-b", "256", "--api-key", "k"], {"ctx_size": 1024, "batch_size": 256, "api_key": "k"}),
]


@pytest.mark.parametrize(("flags", "expected"), MAPPED, ids=[" ".join(flags) for flags, _ in MAPPED])
def test_a_mapped_flag_lands_in_the_config(model_path: str, flags: list[str], expected: dict[str, Any]) -> None:
    config = parsed(model_path, *flags)
    assert {name: getattr(config, name) for name in expected} == expected


def test_the_defaults_stay_igllamas(model_path: str) -> None:
    config = parsed(model_path)
    assert (config.max_tokens, config.temp, config.parallel, config.ctx_size, config.seed, config.ubatch_size,
            config.flash_attn, config.pooling, config.ui, config.cors_origins, config.repack) == \
           (2048, 0.7, 4, 4096, None, 0, "auto", None, True, "*", False)


def test_chat_template_takes_jinja_text_as_llama_server_does(model_path: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert parsed(model_path, "--chat-template", INLINE_TEMPLATE).chat_template == INLINE_TEMPLATE
    assert "neither a built-in template nor a file" in refusal(model_path, capsys, "--chat-template", "no-such")


def test_chat_template_file_is_the_template(model_path: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert parsed(model_path, "--chat-template-file", str(template)).chat_template == str(template)
    assert "is not a file" in refusal(model_path, capsys, "--chat-template-file", str(tmp_path / "none.jinja"))


def test_api_key_file_gives_every_key_on_its_lines(model_path: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# the team's keys\nalpha\n\n  beta  \n#gamma\n")
    assert parsed(model_path, "--api-key-file", str(keys)).api_keys == ("alpha", "beta")
    keys.write_text("# none yet\n")
    assert "holds no key" in refusal(model_path, capsys, "--api-key-file", str(keys))


def test_the_engine_gets_ubatch_flash_attention_and_pooling(model_path: str) -> None:
    config = engine_config(parsed(model_path, "-ub", "64", "-fa", "off", "--pooling", "last"))
    assert (config.n_ubatch, config.flash_attn, config.pooling) == (64, "off", "last")


BAD: list[tuple[list[str], str]] = [
    (["--pooling", "none"], "one pooled vector per input"),
    (["--pooling", "rank"], "one pooled vector per input"),
    (["-fa", "sometimes"], "on, off or auto"),
    (["-fa", "off", "-ctv", "q8_0"], "needs flash attention"),
    (["--seed", "-5"], "-1 (random)"),
    (["--top-p", "2"], "between 0 and 1"),
    (["--spec-type", "draft-simple"], "no draft model"),
    (["-rea", "on"], "does not force a model to think"),
    (["-lm", "dio"], "always memory-maps"),
    (["--alias", "a,b"], "one model one name"),
    (["--host", "/run/llama.sock"], "not UNIX sockets"),
    (["--cors-origins", "not an origin"], "--cors-origins"),
    (["-n", "0"], "at least 1 (or -1"),
]


@pytest.mark.parametrize(("flags", "words"), BAD, ids=[" ".join(flags) for flags, _ in BAD])
def test_a_mapped_flag_with_a_value_igllama_cannot_honour_is_one_line(
        model_path: str, capsys: pytest.CaptureFixture[str], flags: list[str], words: str) -> None:
    assert words in refusal(model_path, capsys, *flags)


# -- CORS policy (pure)


def test_the_default_policy_is_the_constant_any_origin_fields() -> None:
    assert ANY_ORIGIN.fields("http://page.example") == CORS_HEADERS
    assert CorsPolicy.parse("*").fields(None) == CORS_HEADERS
    assert b"Access-Control-Allow-Origin: *\r\n" in CORS_HEADERS


def test_a_listed_origin_is_echoed_and_another_is_not() -> None:
    policy = CorsPolicy.parse("http://page.example, https://app.example:8443/")
    fields = policy.fields("http://page.example")
    assert b"Access-Control-Allow-Origin: http://page.example\r\n" in fields and b"Vary: Origin\r\n" in fields
    assert b"Access-Control-Allow-Origin: https://app.example:8443\r\n" in policy.fields("https://app.example:8443")
    for stranger in ("http://evil.example", "null", None, "http://page.example.evil", "http://page.example\r\nX: y"):
        assert b"Access-Control-Allow-Origin" not in policy.fields(stranger), stranger


def test_localhost_allows_pages_of_this_machine_on_any_port() -> None:
    policy = CorsPolicy.parse("localhost")
    for origin in ("http://localhost:5173", "http://127.0.0.1:3000", "http://[::1]:8080", "https://localhost"):
        assert f"Access-Control-Allow-Origin: {origin}\r\n".encode() in policy.fields(origin)
    assert b"Access-Control-Allow-Origin" not in policy.fields("http://localhost.evil.example")


def test_credentials_echo_the_origin_instead_of_the_wildcard() -> None:
    policy = CorsPolicy.parse("*", credentials=True)
    fields = policy.fields("http://page.example")
    assert b"Access-Control-Allow-Origin: http://page.example\r\n" in fields
    assert b"Access-Control-Allow-Credentials: true\r\n" in fields
    assert b"Access-Control-Allow-Origin" not in policy.fields(None)


def test_methods_are_the_ones_given() -> None:
    fields = CorsPolicy.parse("http://page.example", "get,post").fields("http://page.example")
    assert b"Access-Control-Allow-Methods: GET, POST\r\n" in fields


@pytest.mark.parametrize("origins", ["", "page.example", "http://page.example/path", "ftp:/x"])
def test_a_bad_origin_list_is_refused(origins: str) -> None:
    with pytest.raises(CorsError, match="cors-origins"):
        CorsPolicy.parse(origins)


# -- real servers


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def llama_flags_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The demo model behind a llama-server command line: two hosts, CORS for one page,
    a default seed and reply length, a key file, no UI, a small ubatch and cls pooling."""
    tmp = tmp_path_factory.mktemp("llama_flags")
    keys = tmp / "keys"
    keys.write_text("# keys\nfirst-key\nsecond-key\n")
    hosts = "127.0.0.1,::1" if ipv6_loopback() else "127.0.0.1,localhost"
    running = start_process(
        [model_path, "--host", hosts, "-c", "1024", "-np", "2", "--n-predict", "8", "--seed", "1234",
         "--temp", "1.0", "--cors-origins", "http://page.example", "--api-key-file", str(keys), "--no-ui",
         "-ub", "16", "-fa", "off", "--pooling", "cls", "--threads-http", "4", "--embeddings",
         "--chat-template", INLINE_TEMPLATE, *ONE_THREAD],
        tmp / "stderr.log")
    yield running
    running.stop()


KEY = {"Authorization": "Bearer second-key"}
INLINE_TEMPLATE = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"


def completion(server: ServerProcess, **fields: Any) -> dict[str, Any]:
    reply = requests.post(f"{server.base_url}/completions", headers=KEY, timeout=TIMEOUT,
                          json={"prompt": "Once upon a time", **fields})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_every_host_answers(llama_flags_server: ServerProcess) -> None:
    port = llama_flags_server.port
    second = "[::1]" if ipv6_loopback() else "localhost"
    for host in ("127.0.0.1", second):
        assert requests.get(f"http://{host}:{port}/health", timeout=TIMEOUT).status_code == 200


def test_a_listed_page_passes_the_preflight_and_reads_the_reply(llama_flags_server: ServerProcess) -> None:
    url = f"{llama_flags_server.base_url}/completions"
    asking = {"Origin": "http://page.example", "Access-Control-Request-Method": "POST",
              "Access-Control-Request-Headers": "content-type, authorization"}
    preflight = requests.options(url, headers=asking, timeout=TIMEOUT)
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://page.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    reply = requests.post(url, headers={**KEY, "Origin": "http://page.example"}, timeout=TIMEOUT,
                          json={"prompt": "Hi", "max_tokens": 2})
    assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "http://page.example"
    assert "Origin" in reply.headers["vary"]


def test_another_page_gets_no_cors_permission(llama_flags_server: ServerProcess) -> None:
    url = f"{llama_flags_server.base_url}/completions"
    preflight = requests.options(url, headers={"Origin": "http://evil.example",
                                               "Access-Control-Request-Method": "POST"}, timeout=TIMEOUT)
    assert "access-control-allow-origin" not in preflight.headers
    health = requests.get(f"{llama_flags_server.url}/health", headers={"Origin": "http://evil.example"},
                          timeout=TIMEOUT)
    assert health.status_code == 200 and "access-control-allow-origin" not in health.headers


def test_the_default_seed_makes_sampled_replies_repeat(llama_flags_server: ServerProcess) -> None:
    # Temperature 1 samples; with no seed in the requests, the server's --seed makes them agree.
    # (Both prefill the whole prompt: a prompt's last token decoded alone after a cached prefix
    # can move the logits' last bits, with -fa off, and so a sampled reply.)
    first = completion(llama_flags_server, temperature=1.0, logit_bias=NEVER_STOP, cache_prompt=False)
    again = completion(llama_flags_server, temperature=1.0, logit_bias=NEVER_STOP, cache_prompt=False)
    assert first["choices"][0]["text"] == again["choices"][0]["text"]
    assert first["usage"]["completion_tokens"] == 8


def test_n_predict_is_the_default_and_the_cap_of_a_reply(llama_flags_server: ServerProcess) -> None:
    for fields in ({}, {"max_tokens": 100}):
        reply = completion(llama_flags_server, logit_bias=NEVER_STOP, **fields)
        assert reply["usage"]["completion_tokens"] == 8
        assert reply["choices"][0]["finish_reason"] == "length"


def test_every_key_of_the_key_file_opens_the_api(llama_flags_server: ServerProcess) -> None:
    models = f"{llama_flags_server.base_url}/models"
    for key in ("first-key", "second-key"):
        assert requests.get(models, headers={"Authorization": f"Bearer {key}"}, timeout=TIMEOUT).status_code == 200
    assert requests.get(models, headers={"Authorization": "Bearer # keys"}, timeout=TIMEOUT).status_code == 401
    assert requests.get(models, timeout=TIMEOUT).status_code == 401


def test_no_ui_serves_no_page(llama_flags_server: ServerProcess) -> None:
    page = requests.get(f"{llama_flags_server.url}/", headers={"Accept": "text/html"}, timeout=TIMEOUT)
    assert page.status_code == 200 and "text/html" not in page.headers["content-type"]


def test_an_inline_chat_template_renders_the_prompt(llama_flags_server: ServerProcess) -> None:
    reply = requests.post(f"{llama_flags_server.url}/apply-template", headers=KEY, timeout=TIMEOUT,
                          json={"messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["prompt"] == "<user>Hi<assistant>"


def test_the_pooling_reaches_the_embeddings(llama_flags_server: ServerProcess, server: ServerProcess) -> None:
    def embedding(running: ServerProcess, headers: dict[str, str]) -> list[float]:
        reply = requests.post(f"{running.base_url}/embeddings", headers=headers, timeout=TIMEOUT,
                              json={"input": "The pooling of these tokens"})
        assert reply.status_code == 200, reply.text
        vector: list[float] = reply.json()["data"][0]["embedding"]
        return vector

    cls = embedding(llama_flags_server, KEY)
    mean = embedding(server, {})  # the shared server: the model's own pooling (mean for this model)
    assert len(cls) == len(mean)
    assert max(abs(a - b) for a, b in zip(cls, mean)) > 1e-3


def test_sleep_idle_seconds_unloads_and_the_next_request_loads_again(model_path: str, tmp_path: Path) -> None:
    running = start_process([model_path, "-c", "512", "-np", "1", "--sleep-idle-seconds", "1", "-n", "4",
                             "--temp", "0", *ONE_THREAD], tmp_path / "stderr.log")
    try:
        assert "unloaded after 1 s idle" in running.stderr()

        def health() -> dict[str, Any]:
            body: dict[str, Any] = requests.get(f"{running.url}/health", timeout=TIMEOUT).json()
            return body

        def ask() -> str:
            reply = requests.post(f"{running.base_url}/completions", timeout=TIMEOUT,
                                  json={"prompt": "Hello", "logit_bias": NEVER_STOP})
            assert reply.status_code == 200, reply.text
            text: str = reply.json()["choices"][0]["text"]
            return text

        first = ask()
        wait_until(lambda: health().get("model") == "unloaded", 60, lambda: f"never unloaded:\n{running.stderr()}")
        assert "unloading model" in running.stderr()
        assert ask() == first  # greedy: the reloaded model answers as before
        assert health() == {"status": "ok", "model": "loaded"}
    finally:
        running.stop()


# -- the page that lists them


def markdown_row(flag: table.Flag) -> str:
    note = flag.note.replace("|", "\\|")
    if flag.only is not None:
        note += f" (another value is refused: {flag.otherwise.replace('|', chr(92) + '|')})"
    return f"| {', '.join(f'`{spelling}`' for spelling in flag.spellings)} | {note} |"


def test_the_doc_lists_every_flag_as_the_table_does() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "llama-server-flags.md").read_text()
    sections = dict(zip(("intro", *table.Kind), re.split(r"^## (?:Mapped|Accepted, changing nothing|Refused)\n",
                                                        doc, flags=re.MULTILINE)))
    for flag in table.FLAGS:
        assert markdown_row(flag) in sections[flag.kind].splitlines(), flag.spellings
