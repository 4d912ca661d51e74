"""llama-server's native API on igllama, driven with llama-server's request shapes.

Where llama-server's answer has a fixed shape (its keys, their types, the
status codes, the error shape), the same request goes to the reference
llama-server built from the same llama.cpp (scripts/reference_server.py) on
the same model and flags, and the two answers are compared. Generated text is
never compared between the two servers (their kernels differ); only igllama's
own answers are compared with each other.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tests.api.conftest import (
    ONE_THREAD,
    REFERENCE_FLAGS,
    STARTUP_TIMEOUT,
    TIMEOUT,
    ServerProcess,
    reference_binary,
    sse_payloads,
    start_process,
)
from tests.conftest import late_stop_string

N_CTX, N_SLOTS = 512, 2
EOS = 1  # Gemma 3's <eos>: biased up, every reply ends at once with it ("eos")
PROMPT = "The capital of France is"
SETTINGS = ["-c", str(N_CTX), "-np", str(N_SLOTS), "--metrics"]


@pytest.fixture(scope="module")
def native(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """igllama with llama-server's flags for the comparisons below (greedy by default)."""
    server = start_process([model_path, *SETTINGS, "-n", "64", "--temp", "0", *ONE_THREAD],
                           tmp_path_factory.mktemp("native") / "stderr.log")
    yield server
    server.stop()


class Reference:
    """The reference llama-server, as scripts/reference_server.py builds it."""

    def __init__(self, binary: Path, model: str, log: Path, *flags: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "--threads", "1",
                 *REFERENCE_FLAGS, *flags], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self._healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the reference llama-server did not start:\n{log.read_text()}")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def reference(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    server = Reference(reference_binary(), model_path, tmp_path_factory.mktemp("reference") / "log",
                       *SETTINGS, "--slots", "--temp", "0")
    yield server
    server.stop()


def post(url: str, path: str, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{url}{path}", data=orjson.dumps(body), timeout=TIMEOUT, **kwargs)


def types(value: dict[str, Any]) -> dict[str, type]:
    # (a float that happens to be whole is still a number: int and float compare as one)
    return {k: float if isinstance(v, int) and not isinstance(v, bool) else type(v) for k, v in value.items()}


def both(native: ServerProcess, reference: Reference, path: str, body: Any) -> tuple[requests.Response, ...]:
    return post(native.url, path, body), post(reference.url, path, body)


# -- /completion


def test_completion_result_has_llama_servers_fields(native: ServerProcess, reference: Reference) -> None:
    body = {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "cache_prompt": False}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", body))
    assert set(ours) == set(theirs)
    assert types(ours) == types(theirs)
    assert set(theirs["timings"]) <= set(ours["timings"])
    # Every sampling setting igllama reports is one llama-server reports, with the same type.
    settings = ours["generation_settings"]
    assert set(settings) <= set(theirs["generation_settings"])
    assert types(settings) == {k: v for k, v in types(theirs["generation_settings"]).items() if k in settings}
    assert ours["stop"] is True and ours["stop_type"] == "limit" and ours["stopping_word"] == ""
    assert ours["tokens_predicted"] == 4 and ours["tokens_evaluated"] == theirs["tokens_evaluated"]
    assert ours["prompt"] == theirs["prompt"]  # the prompt as tokenized, BOS written out
    assert ours["tokens"] == [] and ours["truncated"] is False
    assert 0 <= ours["id_slot"] < N_SLOTS
    assert settings["n_predict"] == 4 and settings["temperature"] == 0 and settings["seed"] == 0xFFFFFFFF


def test_completion_probabilities_and_tokens(native: ServerProcess, reference: Reference) -> None:
    body = {"prompt": PROMPT, "n_predict": 3, "temperature": 0, "n_probs": 2, "return_tokens": True}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", body))
    probs, their_probs = ours["completion_probabilities"], theirs["completion_probabilities"]
    assert len(probs) == len(ours["tokens"]) == ours["tokens_predicted"] == 3
    for entry in probs:
        assert set(entry) == set(their_probs[0]) and types(entry) == types(their_probs[0])
        assert len(entry["top_logprobs"]) == 2
        assert set(entry["top_logprobs"][0]) == set(their_probs[0]["top_logprobs"][0])
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert entry["logprob"] <= 0 and entry["top_logprobs"][0]["logprob"] >= entry["logprob"]
    # The tokens are the generated ones: their probabilities' ids, and their text is the content.
    assert [entry["id"] for entry in probs] == ours["tokens"]
    assert "".join(entry["token"] for entry in probs) == ours["content"]


def test_completion_streams_llama_servers_frames(native: ServerProcess, reference: Reference) -> None:
    body = {"prompt": PROMPT, "n_predict": 4, "temperature": 0, "stream": True, "return_tokens": True,
            "n_probs": 1, "cache_prompt": False}
    responses = both(native, reference, "/completion", body)
    for response in responses:
        assert response.headers["content-type"].startswith("text/event-stream")
    ours, theirs = ([orjson.loads(p) for p in sse_payloads(r.content)] for r in responses)
    assert b"[DONE]" not in responses[0].content  # llama-server's own routes end with the last object
    assert [frame["stop"] for frame in ours] == [False] * (len(ours) - 1) + [True]
    for frame in ours[:-1]:
        assert set(frame) == set(theirs[0]) and types(frame) == types(theirs[0])
    assert set(ours[-1]) == set(theirs[-1])
    counts = [frame["tokens_predicted"] for frame in ours]
    assert counts == sorted(counts) and counts[0] >= 1
    whole = post(native.url, "/completion", {**body, "stream": False}).json()
    assert "".join(frame["content"] for frame in ours) == whole["content"]
    assert [t for frame in ours for t in frame["tokens"]] == whole["tokens"]
    assert ours[-1]["tokens_predicted"] == whole["tokens_predicted"] and ours[-1]["stop_type"] == "limit"


def test_response_fields_pick_the_result(native: ServerProcess, reference: Reference) -> None:
    fields = ["content", "generation_settings/n_predict", "no_such_field"]
    body = {"prompt": PROMPT, "n_predict": 2, "response_fields": fields}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", body))
    assert set(ours) == set(theirs) == {"content", "generation_settings/n_predict"}
    assert ours["generation_settings/n_predict"] == theirs["generation_settings/n_predict"] == 2
    # Streamed: the last frame is picked; the others carry their token ids, asked for or not.
    responses = both(native, reference, "/completion", {**body, "stream": True})
    ours_frames, theirs_frames = ([orjson.loads(p) for p in sse_payloads(r.content)] for r in responses)
    assert set(ours_frames[-1]) == set(theirs_frames[-1])
    assert all(frame["tokens"] for frame in ours_frames[:-1])
    assert sum(len(frame["tokens"]) for frame in ours_frames[:-1]) == 2


def test_stop_types(native: ServerProcess, reference: Reference) -> None:
    eos = {"prompt": PROMPT, "n_predict": 8, "logit_bias": [[EOS, 100]]}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", eos))
    assert ours["stop_type"] == theirs["stop_type"] == "eos" and ours["content"] == ""
    # `false` bans a token: greedy then picks another first token.
    greedy = {"prompt": PROMPT, "n_predict": 1, "temperature": 0, "return_tokens": True}
    (first,) = post(native.url, "/completion", greedy).json()["tokens"]
    ours, theirs = both(native, reference, "/completion", {**greedy, "logit_bias": [[first, False]]})
    assert ours.status_code == theirs.status_code == 200
    assert ours.json()["tokens"] != [first] and len(ours.json()["tokens"]) == 1
    greedy = {"prompt": PROMPT, "n_predict": 8, "temperature": 0, "cache_prompt": False}
    first = post(native.url, "/completion", greedy).json()
    at, word = late_stop_string(first["content"])
    stopped = post(native.url, "/completion", {**greedy, "stop": [word]}).json()
    assert stopped["stop_type"] == "word" and stopped["stopping_word"] == word
    assert stopped["content"] == first["content"][:at]
    # The stop string's tokens count as generated, as in llama-server: `tokens` holds them all.
    ids = post(native.url, "/completion", {**greedy, "stop": [word], "return_tokens": True}).json()
    assert len(ids["tokens"]) == ids["tokens_predicted"] == stopped["tokens_predicted"]


def test_grammar_and_json_schema(native: ServerProcess, reference: Reference) -> None:
    body = {"prompt": "Is the sky blue? Answer:", "n_predict": 8, "grammar": 'root ::= " yes" | " no"'}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", body))
    assert ours["content"] in (" yes", " no") and ours["stop_type"] == theirs["stop_type"] == "eos"
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    reply = post(native.url, "/completion", {"prompt": "JSON:", "n_predict": 48, "json_schema": schema}).json()
    if reply["stop_type"] == "eos":  # (the model may still be writing digits when n_predict runs out)
        assert isinstance(orjson.loads(reply["content"])["a"], int)
    assert reply["content"].lstrip().startswith("{")
    ours, theirs = both(native, reference, "/completion", {"prompt": "x", "grammar": "root ::= ("})
    assert ours.status_code == theirs.status_code == 400
    assert set(ours.json()["error"]) == set(theirs.json()["error"])


def test_prompt_shapes(native: ServerProcess, reference: Reference) -> None:
    tokens = post(native.url, "/tokenize", {"content": PROMPT, "add_special": True}).json()["tokens"]
    mixed = [tokens[0], "The capital", *post(native.url, "/tokenize", {"content": " of France is"}).json()["tokens"]]
    base = {"n_predict": 3, "temperature": 0, "cache_prompt": False}
    by_text = post(native.url, "/completion", {**base, "prompt": PROMPT}).json()
    by_ids = post(native.url, "/completion", {**base, "prompt": tokens}).json()
    by_mix = post(native.url, "/completion", {**base, "prompt": mixed}).json()
    assert by_text["tokens_evaluated"] == by_ids["tokens_evaluated"] == len(tokens)
    assert by_ids["content"] == by_text["content"]
    assert by_mix["tokens_evaluated"] == len(tokens) and by_mix["content"] == by_text["content"]
    several = {**base, "prompt": [PROMPT, tokens]}
    ours, theirs = (r.json() for r in both(native, reference, "/completion", several))
    assert isinstance(ours, list) and isinstance(theirs, list) and len(ours) == len(theirs) == 2
    assert [r["index"] for r in ours] == [0, 1] and ours[1]["content"] == by_text["content"]


def test_id_slot_runs_on_that_slot(native: ServerProcess, reference: Reference) -> None:
    for slot in range(N_SLOTS):
        body = {"prompt": PROMPT, "n_predict": 1, "id_slot": slot}
        ours, theirs = (r.json() for r in both(native, reference, "/completion", body))
        assert ours["id_slot"] == theirs["id_slot"] == slot
    error = post(native.url, "/completion", {"prompt": PROMPT, "id_slot": N_SLOTS}).json()["error"]
    assert "id_slot" in error["message"]


def test_completion_errors_in_llama_servers_shape(native: ServerProcess, reference: Reference) -> None:
    for body in ({"n_predict": 3}, {"prompt": PROMPT, "n_predict": "many"}, {"prompt": PROMPT, "temperature": "hot"},
                 {"prompt": [10**9]}):
        ours, theirs = both(native, reference, "/completion", body)
        assert ours.status_code == theirs.status_code == 400, body
        assert set(ours.json()) == {"error"} and set(ours.json()["error"]) == set(theirs.json()["error"])
        assert ours.json()["error"]["type"] == theirs.json()["error"]["type"] == "invalid_request_error"
        assert ours.json()["error"]["code"] == 400
    # A sampler igllama does not have is refused, not ignored (llama-server has it: it answers 200).
    refused = post(native.url, "/completion", {"prompt": PROMPT, "mirostat": 2})
    assert refused.status_code == 501
    assert refused.json()["error"]["type"] == "not_supported_error" and "mirostat" in refused.json()["error"]["message"]
    # llama-server's own sampler list (as its /props lists it) samples as igllama does; another order cannot.
    default = requests.get(f"{reference.url}/props", timeout=TIMEOUT).json()["default_generation_settings"]
    for samplers in (default["params"]["samplers"], "edkypmxt"):
        ours, theirs = both(native, reference, "/completion", {"prompt": PROMPT, "n_predict": 1, "samplers": samplers})
        assert ours.status_code == theirs.status_code == 200, samplers
    reordered = post(native.url, "/completion", {"prompt": PROMPT, "samplers": ["temperature", "min_p", "top_p",
                                                                                 "top_k", "penalties"]})
    assert reordered.status_code == 501 and "order" in reordered.json()["error"]["message"]


def test_unsupported_features_answer_501(native: ServerProcess, reference: Reference) -> None:
    for path, body in (("/infill", {"input_prefix": "def f(", "input_suffix": "    return 1\n"}),  # no FIM tokens
                       ("/rerank", {"query": "a", "documents": ["b"]}), ("/v1/reranking", {"query": "a"}),
                       ("/props", {"n_ctx": 1})):
        ours, theirs = both(native, reference, path, body)
        assert ours.status_code == theirs.status_code == 501, path
        assert set(ours.json()["error"]) == set(theirs.json()["error"]) == {"code", "message", "type"}
        assert ours.json()["error"]["type"] == "not_supported_error" and ours.json()["error"]["code"] == 501


# -- /embedding, /v1/health, routes without /v1


def test_native_embedding(native: ServerProcess, model_path: str, tmp_path: Path) -> None:
    reference = Reference(reference_binary(), model_path, tmp_path / "log", "-c", str(N_CTX), "--embeddings",
                          "--pooling", "mean")
    try:
        for path, body in (("/embedding", {"content": "hello world"}), ("/embedding", {"content": ["a", [2, 9]]}),
                           ("/embeddings", {"input": "hello"})):
            ours, theirs = post(native.url, path, body), post(reference.url, path, body)
            assert ours.status_code == theirs.status_code == 200
            ours_body, theirs_body = ours.json(), theirs.json()
            assert isinstance(ours_body, list) and len(ours_body) == len(theirs_body)
            for mine, ref in zip(ours_body, theirs_body):
                assert set(mine) == set(ref) == {"index", "embedding"}
                assert len(mine["embedding"]) == len(ref["embedding"]) == 1  # pooled: one vector
                assert len(mine["embedding"][0]) == len(ref["embedding"][0])
                assert abs(sum(x * x for x in mine["embedding"][0]) - 1.0) < 1e-3  # L2-normalised, as theirs
        ours, theirs = post(native.url, "/embedding", {}), post(reference.url, "/embedding", {})
        assert ours.status_code == theirs.status_code == 400
        assert set(ours.json()["error"]) == set(theirs.json()["error"])
    finally:
        reference.stop()
    refused = post(native.url, "/embedding", {"content": "x", "embd_normalize": -1})
    assert refused.status_code == 501 and "embd_normalize" in refused.json()["error"]["message"]


def test_health_and_routes_without_v1(native: ServerProcess, reference: Reference) -> None:
    for url in (native.url, reference.url):
        health = requests.get(f"{url}/v1/health", timeout=TIMEOUT)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    calls = (("POST", "/chat/completions", chat), ("POST", "/responses", {"input": "Hi", "max_output_tokens": 2}),
             ("GET", "/models", None))
    for method, path, body in calls:
        plain = requests.request(method, f"{native.url}{path}", json=body, timeout=TIMEOUT)
        versioned = requests.request(method, f"{native.url}/v1{path}", json=body, timeout=TIMEOUT)
        theirs = requests.request(method, f"{reference.url}{path}", json=body, timeout=TIMEOUT)
        assert plain.status_code == versioned.status_code == theirs.status_code == 200, path
        assert plain.json()["object"] == versioned.json()["object"] == theirs.json()["object"]
    # Without /v1, llama-server answers /completions in its native shape (as /completion), not OpenAI's.
    body = {"prompt": PROMPT, "max_tokens": 2}
    ours, theirs = (r.json() for r in both(native, reference, "/completions", body))
    assert set(ours) == set(theirs) and "content" in ours
    assert "choices" in post(native.url, "/v1/completions", body).json()


# -- what monitoring reads: /props, /slots, system_fingerprint, /metrics


def test_props_and_slots_report_per_slot_context(native: ServerProcess, reference: Reference) -> None:
    ours, theirs = (requests.get(f"{s.url}/props", timeout=TIMEOUT).json() for s in (native, reference))
    assert ours["default_generation_settings"]["n_ctx"] == theirs["default_generation_settings"]["n_ctx"] \
        == N_CTX // N_SLOTS
    params, their_params = ours["default_generation_settings"]["params"], theirs["default_generation_settings"]["params"]
    assert "seed" in params and set(params) - {"stop", "logit_bias", "grammar"} <= set(their_params)
    assert params["seed"] == their_params["seed"]  # (no --seed: a random seed per request)
    assert ours["total_slots"] == theirs["total_slots"] == N_SLOTS
    ours_slots, theirs_slots = (requests.get(f"{s.url}/slots", timeout=TIMEOUT).json() for s in (native, reference))
    assert [s["n_ctx"] for s in ours_slots] == [s["n_ctx"] for s in theirs_slots] == [N_CTX // N_SLOTS] * N_SLOTS


def test_system_fingerprint(native: ServerProcess, reference: Reference) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for url in (native.url, reference.url):
        whole = post(url, "/v1/chat/completions", chat).json()
        assert isinstance(whole["system_fingerprint"], str) and whole["system_fingerprint"]
        chunks = [orjson.loads(p) for p in sse_payloads(post(url, "/v1/chat/completions", {**chat, "stream": True})
                                                        .content)[:-1]]
        assert all(chunk["system_fingerprint"] == whole["system_fingerprint"] for chunk in chunks)
        text = post(url, "/v1/completions", {"prompt": PROMPT, "max_tokens": 2}).json()
        assert text["system_fingerprint"] == whole["system_fingerprint"]


def _samples(text: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#") and "{" not in line}


def test_llamacpp_metrics(native: ServerProcess, reference: Reference) -> None:
    post(native.url, "/completion", {"prompt": PROMPT, "n_predict": 2})
    response = requests.get(f"{native.url}/metrics", timeout=TIMEOUT)
    ours = _samples(response.text)
    theirs = _samples(requests.get(f"{reference.url}/metrics", timeout=TIMEOUT).text)
    exported = {name for name in ours if name.startswith("llamacpp:")}
    assert {"llamacpp:prompt_tokens_total", "llamacpp:tokens_predicted_total", "llamacpp:prompt_seconds_total",
            "llamacpp:tokens_predicted_seconds_total", "llamacpp:n_decode_total", "llamacpp:requests_processing",
            "llamacpp:requests_deferred"} <= exported
    assert exported <= set(theirs)  # no name llama-server does not have
    # The same counts as igllama's own metrics.
    assert ours["llamacpp:tokens_predicted_total"] == ours["igllama_generated_tokens_total"] >= 2
    assert ours["llamacpp:prompt_tokens_total"] == \
        ours["igllama_prompt_tokens_total"] - ours["igllama_prompt_tokens_cached_total"]
    assert ours["llamacpp:requests_processing"] == 0 and ours["llamacpp:n_decode_total"] >= 2
    started = int(response.headers["Process-Start-Time-Unix"])
    assert started <= time.time()
