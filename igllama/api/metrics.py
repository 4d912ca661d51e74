"""Prometheus metrics: counters and histograms kept on the event loop, gauges
from the engine's latest stats snapshot, written in the text exposition
format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/).

Everything here runs on the event loop: requests are counted as their
handlers answer, replies observed as they end (`observe_reply`), and the
engine's state is read only from the `EngineStats` the engine thread
published, never from the engine itself.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable

from igllama.engine import EngineStats, Finished

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

# Bucket bounds in seconds, for a CPU server whose replies take seconds.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are exposed."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf only)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def lines(self, name: str) -> list[str]:
        out, cumulative = [], 0
        for bound, n in zip(self.bounds, self.counts):
            cumulative += n
            out.append(f'{name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
        out.append(f"{name}_sum {_number(self.total)}")
        out.append(f"{name}_count {self.count}")
        return out


class Metrics:
    """The server's counters and histograms, and their exposition with the engine's gauges."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status) -> requests answered
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generated_tokens = 0
        self.drafted_tokens = 0
        self.accepted_tokens = 0
        self.prefill_seconds = 0.0
        self.generation_seconds = 0.0
        self.longest_sequence = 0  # prompt + reply tokens of the longest request so far
        # (prompt tokens, their seconds, generated tokens, their seconds) at the last scrape:
        # llama-server's throughput gauges cover the time since then.
        self._last_scrape = (0, 0.0, 0, 0.0)
        self.first_token = Histogram(_LATENCY_BUCKETS)
        self.per_output_token = Histogram(_TOKEN_BUCKETS)
        self.queue_wait = Histogram(_LATENCY_BUCKETS)
        self.duration = Histogram(_LATENCY_BUCKETS)

    def count_request(self, route: str, status: int) -> None:
        self.requests[route, status] += 1

    def observe_reply(self, done: Finished, seconds: float) -> None:
        """A completion ended (all its choices): its tokens and timings."""
        self.prompt_tokens += done.prompt_tokens
        self.cached_prompt_tokens += done.cached_tokens
        self.generated_tokens += done.completion_tokens
        self.drafted_tokens += done.drafted
        self.accepted_tokens += done.accepted
        self.prefill_seconds += done.prefill_ms / 1000.0
        self.generation_seconds += done.generation_ms / 1000.0
        self.longest_sequence = max(self.longest_sequence, done.prompt_tokens + done.completion_tokens)
        self.first_token.observe(done.first_token_seconds)
        self.queue_wait.observe(done.queued_ms / 1000.0)
        per_token = done.seconds_per_output_token
        if per_token is not None:
            self.per_output_token.observe(per_token)
        self.duration.observe(seconds)

    def exposition(self, engines: dict[str, EngineStats]) -> bytes:
        """Every metric in the text format; each loaded model's engine gauges, labelled with its name."""
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, lines: list[str]) -> None:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)

        def counter(name: str, help_text: str, value: float) -> None:
            metric(name, "counter", help_text, [f"{name} {_number(value)}"])

        def gauge(name: str, help_text: str, value: float) -> None:
            metric(name, "gauge", help_text, [f"{name} {_number(value)}"])

        metric("igllama_requests_total", "counter", "HTTP requests answered, by route and status.", [
            f'igllama_requests_total{{endpoint="{_label(route)}",status="{status}"}} {n}'
            for (route, status), n in sorted(self.requests.items())
        ])
        counter("igllama_prompt_tokens_total", "Prompt tokens of completed requests.", self.prompt_tokens)
        counter("igllama_prompt_tokens_cached_total", "Prompt tokens reused from the prefix cache.",
                self.cached_prompt_tokens)
        counter("igllama_generated_tokens_total", "Tokens generated.", self.generated_tokens)
        counter("igllama_draft_tokens_total", "Tokens drafted by speculation.", self.drafted_tokens)
        counter("igllama_draft_tokens_accepted_total", "Drafted tokens the model's own sampling confirmed.",
                self.accepted_tokens)
        metric("igllama_time_to_first_token_seconds", "histogram",
               "From submission to the first token (queue wait and prefill).",
               self.first_token.lines("igllama_time_to_first_token_seconds"))
        metric("igllama_time_per_output_token_seconds", "histogram",
               "Mean time between generated tokens, per request.",
               self.per_output_token.lines("igllama_time_per_output_token_seconds"))
        metric("igllama_queue_wait_seconds", "histogram", "Time a request waited for a slot.",
               self.queue_wait.lines("igllama_queue_wait_seconds"))
        metric("igllama_request_duration_seconds", "histogram",
               "Completion requests, from arrival to the reply's end.",
               self.duration.lines("igllama_request_duration_seconds"))

        def per_model(name: str, kind: str, help_text: str, value: Callable[[EngineStats], float]) -> None:
            metric(name, kind, help_text, [
                f'{name}{{model="{_label(model)}"}} {_number(value(stats))}' for model, stats in engines.items()
            ])

        gauge("igllama_models_loaded", "Models loaded (serving without a load first).", len(engines))
        if engines:
            per_model("igllama_decode_steps_total", "counter", "llama_decode calls (one batch each), since the "
                      "model was loaded.", lambda s: s.decode_steps)
            per_model("igllama_requests_running", "gauge", "Requests holding a slot (prefilling or generating).",
                      lambda s: s.running)
            per_model("igllama_requests_queued", "gauge", "Requests waiting for a slot.", lambda s: s.queued)
            per_model("igllama_slots_busy", "gauge", "Slots serving a request.", lambda s: s.busy_slots)
            per_model("igllama_slots_total", "gauge", "Slots (--parallel).", lambda s: len(s.slots))
            per_model("igllama_kv_cells_used", "gauge", "KV cache cells holding a token.", lambda s: s.kv_cells_used)
            per_model("igllama_kv_cells_total", "gauge", "KV cache cells (--ctx-size).", lambda s: s.kv_cells_total)
            per_model("igllama_prompt_cache_bytes", "gauge", "Idle slots' KV states kept in host RAM (--cache-ram).",
                      lambda s: s.prompt_cache_bytes)
        out += self._llamacpp(engines)
        return ("\n".join(out) + "\n").encode()

    def _llamacpp(self, engines: dict[str, EngineStats]) -> list[str]:
        """llama-server's `llamacpp:` metrics, from the same counts as ours, so that its dashboards
        work unchanged. One server, so no model label: engine counts are summed over loaded models.
        Its throughput gauges, as in llama-server, cover the requests ended since the last scrape."""
        prompt_tokens = self.prompt_tokens - self.cached_prompt_tokens  # (llama-server's excludes cached ones)
        now = (prompt_tokens, self.prefill_seconds, self.generated_tokens, self.generation_seconds)
        since = [a - b for a, b in zip(now, self._last_scrape)]
        self._last_scrape = now
        out: list[str] = []

        def one(name: str, kind: str, help_text: str, value: float) -> None:
            out.extend((f"# HELP llamacpp:{name} {help_text}", f"# TYPE llamacpp:{name} {kind}",
                        f"llamacpp:{name} {_number(value)}"))

        one("prompt_tokens_total", "counter", "Number of prompt tokens processed, excluding cached tokens",
            prompt_tokens)
        one("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache",
            self.cached_prompt_tokens)
        one("prompt_seconds_total", "counter", "Total time spent processing prompts", self.prefill_seconds)
        one("tokens_predicted_total", "counter", "Number of generation tokens processed", self.generated_tokens)
        one("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens",
            self.generation_seconds)
        one("n_decode_total", "counter", "Total number of llama_decode() calls",
            sum(stats.decode_steps for stats in engines.values()))
        one("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)",
            self.longest_sequence)
        one("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated",
            self.drafted_tokens)
        one("spec_decode_num_accepted_tokens_total", "counter",
            "Speculative: Total draft tokens accepted by the target model", self.accepted_tokens)
        one("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s",
            since[0] / since[1] if since[1] > 0 else 0.0)
        one("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s",
            since[2] / since[3] if since[3] > 0 else 0.0)
        one("requests_processing", "gauge", "Number of requests processing",
            sum(stats.running for stats in engines.values()))
        one("requests_deferred", "gauge", "Number of requests deferred", sum(stats.queued for stats in engines.values()))
        return out


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _label(value: str) -> str:
    """A label value with backslash, quote and newline escaped (the format's rules)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
