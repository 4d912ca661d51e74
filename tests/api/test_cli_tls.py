"""`igllama api --ssl-cert-file FILE --ssl-key-file FILE`: HTTPS as a user runs it.

A CA made by ``trustme`` signs the server's certificate for 127.0.0.1 and
localhost; the clients trust that CA and nothing else.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.api.conftest import ONE_THREAD, REPO, TIMEOUT, igllama_command, run_cli, sse_chunks, user

trustme = pytest.importorskip("trustme", reason="install the test extra: pip install -e .[test]")

ERROR = "igllama: error: "
STARTUP_TIMEOUT = 120.0


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    other_key: Path  # the key of another certificate


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem", folder / "other-key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    files.cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.key))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(files.other_key))
    return files


def assert_one_error_line(stderr: str, expected: str) -> None:
    assert stderr == f"{ERROR}{expected}\n", stderr


# -- refusals


@pytest.mark.parametrize("flag", ["--ssl-cert-file", "--ssl-key-file"])
def test_one_tls_flag_without_the_other_is_a_usage_error(model_path: str, certificates: Certificates,
                                                         flag: str) -> None:
    result = run_cli("api", model_path, flag, str(certificates.cert))
    assert result.returncode == 2
    assert_one_error_line(
        result.stderr, "--ssl-cert-file and --ssl-key-file go together: give both to serve HTTPS, or neither"
    )


def test_a_missing_certificate_is_one_line_and_exit_1(model_path: str, certificates: Certificates,
                                                      tmp_path: Path) -> None:
    missing = tmp_path / "cert.pem"
    result = run_cli("api", model_path, "-p", "0", "--ssl-cert-file", str(missing),
                     "--ssl-key-file", str(certificates.key))
    assert result.returncode == 1
    # Refused before the banner: nothing was bound, no model loaded.
    assert_one_error_line(result.stderr, f"cannot read the TLS certificate {missing}: No such file or directory")


def test_a_key_that_does_not_match_is_one_line_and_exit_1(model_path: str, certificates: Certificates) -> None:
    result = run_cli("api", model_path, "-p", "0", "--ssl-cert-file", str(certificates.cert),
                     "--ssl-key-file", str(certificates.other_key))
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr,
        f"the TLS private key {certificates.other_key} is not the key of the certificate {certificates.cert}",
    )


# -- serving


@dataclass
class HTTPSServer:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def https_server(model_path: str, certificates: Certificates,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPSServer]:
    """The demo model served over HTTPS, once its "ready" line is printed."""
    log_path = tmp_path_factory.mktemp("https") / "stderr.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            igllama_command("api", model_path, "-p", "0", "-c", "2048", "-np", "1", "-n", "8", "--temp", "0",
                            *ONE_THREAD, "--ssl-cert-file", str(certificates.cert),
                            "--ssl-key-file", str(certificates.key)),
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not (ready := re.search(r"ready in \d+\.\d s: (https://127\.0\.0\.1:\d+)/v1", log_path.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"igllama api --ssl-cert-file did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield HTTPSServer(process, ready.group(1), log_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_banner_and_the_ready_line_say_https(https_server: HTTPSServer, certificates: Certificates) -> None:
    banner = https_server.stderr()
    assert f"OpenAI-compatible API on {https_server.url}\n" in banner
    assert f"  tls      certificate {certificates.cert}, key {certificates.key}\n" in banner
    assert "http://" not in banner


def test_health_and_a_streamed_chat_over_https(https_server: HTTPSServer, certificates: Certificates) -> None:
    verify = str(certificates.ca)
    health = requests.get(f"{https_server.url}/health", verify=verify, timeout=TIMEOUT)
    assert (health.status_code, health.json()) == (200, {"status": "ok", "model": "loaded"})
    reply = requests.post(f"{https_server.url}/v1/chat/completions", json=user("Hi", 4, stream=True),
                          verify=verify, timeout=TIMEOUT)
    assert reply.status_code == 200 and reply.headers["content-type"] == "text/event-stream"
    chunks = sse_chunks(reply.content)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)


def test_plain_http_to_the_https_port_is_refused_and_https_goes_on(
    https_server: HTTPSServer, certificates: Certificates
) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(https_server.url.replace("https://", "http://") + "/health", timeout=TIMEOUT)
    health = requests.get(f"{https_server.url}/health", verify=str(certificates.ca), timeout=TIMEOUT)
    assert health.status_code == 200
    assert https_server.process.poll() is None
    assert "Traceback" not in https_server.stderr()
