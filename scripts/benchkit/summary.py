"""The figures of a run: which metrics there are, their targets, and the medians per side.

A step (``benchkit.steps``) records samples under a metric key; this table
names each key for the report. A metric missing from the table is kept in
the JSON's samples but never printed.
"""

from __future__ import annotations

import statistics

OURS, REF = "ours", "reference"  # the two sides: igllama (or its stand-in) and llama-server

# side -> metric key -> samples, in the order they were taken
Samples = dict[str, dict[str, list[float]]]


def fmt(v: float | None, nd: int = 1) -> str:
    """``v`` with ``nd`` decimals, or n/a where a measurement gave nothing."""
    return "n/a" if v is None else f"{v:.{nd}f}"


def metric_table(concurrency: list[int]) -> list[tuple[str, str, str, bool, int]]:
    """The report's rows, in order: key, label, unit, higher_is_better, decimals."""
    return [
        ("gen_tps", "Generation, 1 stream", "tok/s", True, 1),
        ("gen_sampled_tps", "Generation, 1 stream, temperature 0.8", "tok/s", True, 1),
        ("prefill_tps", "Prefill (~800-token prompt)", "tok/s", True, 0),
        ("prefill_ttft_ms", "TTFT, ~800-token prompt", "ms", False, 0),
        *[(f"agg_tps_{n}", f"Aggregate, {n} client{'s' if n > 1 else ''}", "tok/s", True, 1)
          for n in concurrency],
        ("turn1_ttft_ms", "TTFT, turn 1", "ms", False, 0),
        ("turn2_ttft_ms", "TTFT, turn 2 (cached prefix)", "ms", False, 0),
        ("turn2_over_turn1", "TTFT turn 2 / turn 1", "x", False, 3),
        ("health_rps", "GET /health, keep-alive", "req/s", True, 0),
        ("ready_s", "Launch to ready", "s", False, 2),
        ("rss_mb", "Resident memory after load", "MB", False, 0),
        ("rss_end_mb", "Resident memory after workload", "MB", False, 0),
    ]


def evaluate_target(key: str, ours: float | None, ref: float | None) -> tuple[str, bool | None]:
    """Target text and whether igllama meets it (None: cannot tell)."""
    ratio = ours / ref if ours is not None and ref else None
    if key in ("gen_tps", "prefill_tps", "agg_tps_4", "agg_tps_8", "health_rps"):
        return ">= 1.00x", None if ratio is None else ratio >= 1.0
    if key == "turn2_over_turn1":
        return "igllama <= 0.25", None if ours is None else ours <= 0.25
    if key == "rss_mb":
        return "<= ref + 80 MB", None if ours is None or ref is None else ours - ref <= 80
    return "", None


def summarize(samples: Samples, disturbed: Samples, concurrency: list[int]) -> list[dict]:
    """Medians per metric and side. Samples taken while other processes were
    busy count only where a side has no undisturbed sample of that metric."""
    rows = []
    for key, label, unit, higher, nd in metric_table(concurrency):
        med: dict[str, float | None] = {}
        n: dict[str, int] = {}
        used_disturbed: list[str] = []
        for side in (OURS, REF):
            vals = samples.get(side, {}).get(key) or []
            if not vals:
                vals = disturbed.get(side, {}).get(key) or []
                if vals:
                    used_disturbed.append(side)
            med[side] = statistics.median(vals) if vals else None
            n[side] = len(vals)
        o, r = med[OURS], med[REF]
        target, met = evaluate_target(key, o, r)
        rows.append({
            "metric": key, "label": label, "unit": unit, "higher_is_better": higher,
            "decimals": nd, "igllama": o, "llama_server": r,
            "ratio": (o / r) if o is not None and r else None,
            "n": n, "from_disturbed_samples": used_disturbed,
            "target": target, "met": met,
        })
    return rows
