"""What operators watch: Prometheus /metrics, /slots, keep-alive pings and
prefill progress on a real server (--metrics, an API key, one prefill thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import (
    NEVER_STOP,
    ONE_THREAD,
    TIMEOUT,
    ServerProcess,
    chat,
    error_of,
    sse_chunks,
    start_process,
    user,
    wait_until,
)

KEY = "sk-ops-51c2"
AUTH = {"Authorization": f"Bearer {KEY}"}
N_CTX = 4096


@pytest.fixture(scope="module")
def watched(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("watched")
    running = start_process(
        [model_path, "--metrics", "--api-key", KEY, "--sse-ping", "0.2", "-c", str(N_CTX), "-np", "2",
         "-b", "128", "--temp", "0", *ONE_THREAD],
        folder / "stderr.log",
    )
    yield running
    running.stop()


def scrape(server: ServerProcess) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics, parsed by Prometheus' own parser: name -> labels -> value."""
    response = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry `labels` (engine gauges also carry the model's name)."""
    wanted = set(labels.items())
    return sum(v for have, v in samples.get(name, {}).items() if wanted <= set(have))


def long_prompt(n_sentences: int) -> str:
    return " ".join(f"Sentence {i} says that the number {i} follows {i - 1}." for i in range(n_sentences))


def test_metrics_need_the_key(watched: ServerProcess) -> None:
    error_of(requests.get(f"{watched.url}/metrics", timeout=TIMEOUT), 401)


def test_metrics_move_with_requests(watched: ServerProcess) -> None:
    before = scrape(watched)
    reply = chat(watched.url, user("Name a colour.", 6, logit_bias=NEVER_STOP), headers=AUTH)
    assert reply.status_code == 200, reply.text
    usage = reply.json()["usage"]
    bad = chat(watched.url, {"messages": "not a list"}, headers=AUTH)
    assert bad.status_code == 400
    after = scrape(watched)
    assert value(after, "igllama_decode_steps_total") > value(before, "igllama_decode_steps_total")

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("igllama_requests_total", endpoint="/v1/chat/completions", status="200") == 1
    assert moved("igllama_requests_total", endpoint="/v1/chat/completions", status="400") == 1
    assert moved("igllama_prompt_tokens_total") == usage["prompt_tokens"]
    assert moved("igllama_generated_tokens_total") == usage["completion_tokens"] == 6
    for histogram in ("igllama_time_to_first_token_seconds", "igllama_time_per_output_token_seconds",
                      "igllama_queue_wait_seconds", "igllama_request_duration_seconds"):
        assert moved(f"{histogram}_count") == 1, histogram
        assert moved(f"{histogram}_bucket", le="+Inf") == 1, histogram
        assert moved(f"{histogram}_sum") > 0 or histogram == "igllama_queue_wait_seconds"
    assert value(after, "igllama_slots_total") == 2
    assert value(after, "igllama_kv_cells_total") == N_CTX
    assert value(after, "igllama_requests_running") == 0 and value(after, "igllama_slots_busy") == 0
    assert 0 < value(after, "igllama_kv_cells_used") <= N_CTX  # the idle slot keeps its tokens for reuse


def test_a_repeated_prompt_counts_cached_tokens(watched: ServerProcess) -> None:
    body = user(long_prompt(20), 2)
    assert chat(watched.url, body, headers=AUTH).status_code == 200
    before = scrape(watched)
    reply = chat(watched.url, body, headers=AUTH).json()
    after = scrape(watched)
    cached = reply["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached > 0
    assert value(after, "igllama_prompt_tokens_cached_total") - value(before, "igllama_prompt_tokens_cached_total") \
        == cached


def test_slots_show_a_request_in_progress_then_idle(watched: ServerProcess) -> None:
    error_of(requests.get(f"{watched.url}/slots", timeout=TIMEOUT), 401)
    body = user("Count.", 400, logit_bias=NEVER_STOP, temperature=0.5, seed=7, stream=True)
    seen: list[dict[str, Any]] = []
    with requests.post(f"{watched.url}/v1/chat/completions", json=body, headers=AUTH, stream=True,
                       timeout=TIMEOUT) as streaming:
        lines = streaming.iter_lines()
        next(lines)  # the role chunk: the request is in

        def busy() -> bool:
            slots = requests.get(f"{watched.url}/slots", headers=AUTH, timeout=TIMEOUT).json()
            seen[:] = [slot for slot in slots if slot["is_processing"]]
            return bool(seen) and seen[0]["next_token"][0]["n_decoded"] > 0

        wait_until(busy, TIMEOUT, "no slot ever showed the request decoding")
        streaming.close()
    (slot,) = seen
    assert slot["n_ctx"] == N_CTX // 2 and slot["id_task"] >= 0  # (llama-server's per-slot share, -np 2)
    assert slot["params"]["temperature"] == 0.5 and slot["params"]["seed"] == 7
    assert slot["params"]["n_predict"] == 400
    (next_token,) = slot["next_token"]
    assert next_token["n_decoded"] + next_token["n_remain"] == 400
    assert slot["n_prompt_tokens_processed"] == slot["n_prompt_tokens"] > 0
    assert slot["n_tokens_cached"] >= slot["n_prompt_tokens"]

    def idle() -> bool:
        slots = requests.get(f"{watched.url}/slots", headers=AUTH, timeout=TIMEOUT).json()
        return len(slots) == 2 and not any(slot["is_processing"] for slot in slots)

    wait_until(idle, TIMEOUT, "the cancelled request kept its slot")


def raw_stream(server: ServerProcess, body: dict[str, Any]) -> bytes:
    with requests.post(f"{server.url}/v1/chat/completions", json=body, headers=AUTH, stream=True,
                       timeout=TIMEOUT) as response:
        assert response.status_code == 200, response.text
        return b"".join(response.iter_content(None))


def test_a_long_prefill_keeps_the_stream_alive_with_pings(watched: ServerProcess) -> None:
    # One prefill thread and a batch of 128: the prompt takes several seconds,
    # far beyond --sse-ping 0.2, before the first token.
    raw = raw_stream(watched, user(long_prompt(120), 4, stream=True))
    frames = raw.split(b"\n\n")
    first_content = next(i for i, frame in enumerate(frames) if b'"content":"' in frame and b'"content":""' not in frame)
    assert b": ping" in frames[:first_content], raw[:400]
    chunks = sse_chunks(raw)  # the pings are comments: the chunks parse as ever
    assert chunks[-1]["choices"][0]["finish_reason"] is not None


def test_pings_are_ignored_by_the_openai_sdk(watched: ServerProcess) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=watched.base_url, api_key=KEY)
    stream = client.chat.completions.create(
        model="any", messages=[{"role": "user", "content": long_prompt(100)}], max_tokens=3, stream=True,
        logit_bias=NEVER_STOP,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text


def test_return_progress_reports_the_prefill_chunk_by_chunk(watched: ServerProcess) -> None:
    raw = raw_stream(watched, user(long_prompt(60), 2, stream=True, return_progress=True, cache_prompt=False,
                                   stream_options={"include_usage": True}))
    chunks = sse_chunks(raw)
    progress = [chunk["prompt_progress"] for chunk in chunks if "prompt_progress" in chunk]
    total = chunks[-1]["usage"]["prompt_tokens"]
    assert len(progress) >= total // 128  # one per batch of --batch-size 128
    processed = [p["processed"] for p in progress]
    assert processed == sorted(processed) and processed[-1] == total
    assert all(p["total"] == total and p["cache"] == 0 for p in progress)
    times = [p["time_ms"] for p in progress]
    assert times == sorted(times)
    first_text = next(i for i, chunk in enumerate(chunks) if chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
    assert chunks.index(next(c for c in chunks if "prompt_progress" in c)) < first_text
    assert all(chunk["choices"] == [] for chunk in chunks if "prompt_progress" in chunk)


def test_progress_is_only_sent_when_asked(watched: ServerProcess) -> None:
    chunks = sse_chunks(raw_stream(watched, user(long_prompt(10), 2, stream=True)))
    assert not any("prompt_progress" in chunk for chunk in chunks)


def test_metrics_are_scraped_while_clients_stream(watched: ServerProcess) -> None:
    # Gauges come from the engine thread's published snapshot: scraping during
    # generation sees the running request and never disturbs it.
    results: list[int] = []

    def client() -> None:
        body = user("Go on.", 60, logit_bias=NEVER_STOP, stream=True)
        results.append(len(sse_chunks(raw_stream(watched, body))))

    thread = threading.Thread(target=client)
    thread.start()
    running_seen = False
    deadline = time.monotonic() + TIMEOUT
    while thread.is_alive() and time.monotonic() < deadline:
        running_seen |= value(scrape(watched), "igllama_requests_running") == 1
        time.sleep(0.05)
    thread.join(TIMEOUT)
    assert running_seen
    assert results and results[0] >= 60


def test_operator_endpoints_off_answer_501(server: ServerProcess) -> None:
    # The shared server runs without --metrics: /metrics says how to turn it on.
    error = error_of(requests.get(f"{server.url}/metrics", timeout=TIMEOUT), 501)
    assert "--metrics" in error["message"]
    slots = requests.get(f"{server.url}/slots", timeout=TIMEOUT)
    assert slots.status_code == 200 and len(slots.json()) == 4


def test_no_slots_flag(model_path: str, tmp_path: Any) -> None:
    running = start_process([model_path, "--no-slots", "-c", "512", "-np", "1", *ONE_THREAD], tmp_path / "log")
    try:
        error = error_of(requests.get(f"{running.url}/slots", timeout=TIMEOUT), 501)
        assert "--no-slots" in error["message"]
        assert orjson.loads(requests.get(f"{running.url}/health", timeout=TIMEOUT).content)["status"] == "ok"
    finally:
        running.stop()
