"""The metrics' exposition, parsed by Prometheus' own text parser (tier 1)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from igllama.api.metrics import Metrics
from igllama.engine import EngineStats, Finished, SlotStats


def families(text: bytes) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }


def reply(completion_tokens: int, queued_ms: float, prefill_ms: float, generation_ms: float) -> Finished:
    return Finished("stop", prompt_tokens=10, cached_tokens=4, completion_tokens=completion_tokens,
                    prefill_ms=prefill_ms, generation_ms=generation_ms, drafted=6, accepted=3, queued_ms=queued_ms)


def test_histograms_are_cumulative_with_sum_and_count() -> None:
    metrics = Metrics()
    metrics.observe_reply(reply(11, queued_ms=0.0, prefill_ms=40.0, generation_ms=200.0), 0.3)
    metrics.observe_reply(reply(1, queued_ms=2000.0, prefill_ms=1000.0, generation_ms=0.0), 3.1)
    got = samples(metrics.exposition({}))
    ttft = "igllama_time_to_first_token_seconds"
    assert got[f"{ttft}_bucket", (("le", "0.05"),)] == 1  # 0.04 s
    assert got[f"{ttft}_bucket", (("le", "2.5"),)] == 1
    assert got[f"{ttft}_bucket", (("le", "5.0"),)] == 2  # 3.0 s
    assert got[f"{ttft}_bucket", (("le", "+Inf"),)] == got[f"{ttft}_count", ()] == 2
    assert abs(got[f"{ttft}_sum", ()] - 3.04) < 1e-9
    # A one-token reply has no time between tokens.
    assert got["igllama_time_per_output_token_seconds_count", ()] == 1
    assert abs(got["igllama_time_per_output_token_seconds_sum", ()] - 0.02) < 1e-9
    assert got["igllama_queue_wait_seconds_count", ()] == 2
    assert got["igllama_prompt_tokens_total", ()] == 20
    assert got["igllama_prompt_tokens_cached_total", ()] == 8
    assert got["igllama_generated_tokens_total", ()] == 12
    assert got["igllama_draft_tokens_total", ()] == 12 and got["igllama_draft_tokens_accepted_total", ()] == 6


def test_requests_by_route_and_status_with_label_escaping() -> None:
    metrics = Metrics()
    metrics.count_request("/v1/chat/completions", 200)
    metrics.count_request("/v1/chat/completions", 200)
    metrics.count_request('/odd"\\path', 404)
    got = samples(metrics.exposition({}))
    assert got["igllama_requests_total", (("endpoint", "/v1/chat/completions"), ("status", "200"))] == 2
    assert got["igllama_requests_total", (("endpoint", '/odd"\\path'), ("status", "404"))] == 1


def test_gauges_come_from_each_loaded_models_snapshot() -> None:
    metrics = Metrics()
    assert "igllama_requests_running" not in families(metrics.exposition({}))
    assert samples(metrics.exposition({}))["igllama_models_loaded", ()] == 0
    stats = EngineStats(
        decode_steps=42, running=1, queued=3, kv_cells_used=700, kv_cells_total=4096, prompt_cache_bytes=1 << 20,
        slots=(SlotStats(0, 500, task_id=9, status="decoding"), SlotStats(1, 200)),
    )
    got = samples(metrics.exposition({"a": stats, "b": EngineStats(kv_cells_total=1024)}))
    a, b = (("model", "a"),), (("model", "b"),)
    assert got["igllama_models_loaded", ()] == 2
    assert got["igllama_decode_steps_total", a] == 42 and got["igllama_decode_steps_total", b] == 0
    assert got["igllama_requests_running", a] == 1 and got["igllama_requests_queued", a] == 3
    assert got["igllama_slots_busy", a] == 1 and got["igllama_slots_total", a] == 2
    assert got["igllama_kv_cells_used", a] == 700 and got["igllama_kv_cells_total", a] == 4096
    assert got["igllama_kv_cells_total", b] == 1024
    assert got["igllama_prompt_cache_bytes", a] == 1 << 20


def test_llama_servers_metrics_carry_the_same_counts() -> None:
    metrics = Metrics()
    metrics.observe_reply(reply(11, queued_ms=0.0, prefill_ms=60.0, generation_ms=200.0), 0.3)
    text = metrics.exposition({"m": EngineStats(slots=(), kv_cells_total=512, decode_steps=12, running=1)})
    got = samples(text)
    assert got["llamacpp:prompt_tokens_total", ()] == 10 - 4  # llama-server's leaves the cached ones out
    assert got["llamacpp:prompt_tokens_cached_total", ()] == got["igllama_prompt_tokens_cached_total", ()] == 4
    assert got["llamacpp:tokens_predicted_total", ()] == got["igllama_generated_tokens_total", ()] == 11
    assert abs(got["llamacpp:prompt_seconds_total", ()] - 0.06) < 1e-9
    assert abs(got["llamacpp:tokens_predicted_seconds_total", ()] - 0.2) < 1e-9
    assert got["llamacpp:n_decode_total", ()] == 12 and got["llamacpp:requests_processing", ()] == 1
    # (a counter, as llama-server types it, though it holds a maximum; the parser would rename it)
    assert b"\nllamacpp:n_tokens_max 21\n" in text
    assert abs(got["llamacpp:prompt_tokens_seconds", ()] - 6 / 0.06) < 1e-6
    # Its throughput gauges cover the time since the last scrape, as llama-server's do.
    again = samples(metrics.exposition({}))
    assert again["llamacpp:prompt_tokens_seconds", ()] == again["llamacpp:predicted_tokens_seconds", ()] == 0
    assert again["llamacpp:tokens_predicted_total", ()] == 11
