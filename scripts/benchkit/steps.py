"""The workloads: each step measures one thing on one server.

A step takes the server, the run's ``Workload`` and the inputs that both
servers share within the step (same prompts, same seeds), and returns the
sample values under their metric keys, a detail record for the JSON and a
log line. A new workload is one ``step_*`` function, listed in
``round_steps``, with its metric keys named in ``summary.metric_table``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from benchkit.client import StreamResult, run_async, stream_chat
from benchkit.health import health_rps_python, health_rps_wrk
from benchkit.server import Server
from benchkit.summary import fmt
from benchkit.workload import Workload, counting_prompt

StepResult = tuple[dict[str, float], dict, str]  # values by metric key, JSON detail, log line


def one_reply(srv: Server, wl: Workload, payload: dict) -> StreamResult:
    """One streamed chat completion, timed frame by frame."""
    return run_async(lambda: stream_chat(wl.host, srv.port, payload, wl.timeout))


def warm_up(srv: Server, wl: Workload) -> None:
    """A short reply before any measurement, so that none pays for a first request."""
    one_reply(srv, wl, wl.chat(counting_prompt(1), 16))


# Sampled generation: llama-server's default chain (top-k 40, top-p 0.95,
# min-p 0.05) at temperature 0.8, with a fixed seed. Not a target of its own:
# it shows the cost of sampling where greedy decoding needs only an argmax.
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1234}


def step_generation(srv: Server, wl: Workload, shared: dict) -> StepResult:
    sampling = shared.get("sampling", {})
    r = one_reply(srv, wl, wl.chat(counting_prompt(1), wl.gen_tokens, **sampling))
    tps = r.gen_tps
    vals = {"gen_tokens": float(r.completion_tokens)}
    if tps is not None:
        vals["gen_sampled_tps" if sampling else "gen_tps"] = tps
    warn = "" if r.completion_tokens >= wl.gen_tokens else (
        f"  WARNING: {r.completion_tokens}/{wl.gen_tokens} tokens")
    return vals, {
        "completion_tokens": r.completion_tokens, "content_frames": r.content_frames,
        "tps": tps, "finish_reason": r.finish_reason, "server_timings": r.timings,
    }, (f"generation {r.completion_tokens} tok ({r.content_frames} frames, {r.finish_reason}) "
        f"{fmt(tps)} tok/s{warn}")


def step_prefill(srv: Server, wl: Workload, shared: dict) -> StepResult:
    r = one_reply(srv, wl, wl.chat(shared["prompt"], 4))
    ttft, pt = r.ttft, r.prompt_tokens
    vals: dict[str, float] = {}
    if ttft:
        vals["prefill_ttft_ms"] = ttft * 1000
        if pt:
            vals["prefill_tps"] = pt / ttft
            vals["prefill_prompt_tokens"] = float(pt)
    return vals, {"prompt_tokens": pt, "ttft_s": ttft, "server_timings": r.timings}, (
        f"prefill {pt} prompt tokens, TTFT {fmt(ttft and ttft * 1000, 0)} ms, "
        f"{fmt(pt / ttft if pt and ttft else None)} tok/s")


def step_aggregate(srv: Server, wl: Workload, shared: dict) -> StepResult:
    n = shared["clients"]

    async def burst() -> list[StreamResult]:
        return await asyncio.gather(*(
            stream_chat(wl.host, srv.port, wl.chat(counting_prompt(start), wl.gen_tokens),
                        wl.timeout)
            for start in shared["starts"]))

    rs = run_async(burst)
    wall = max(r.t_end for r in rs) - min(r.t_start for r in rs)
    toks = sum(r.completion_tokens for r in rs)
    return {f"agg_tps_{n}": toks / wall}, {
        "clients": n, "tokens": toks, "wall_s": wall,
        "per_client_tokens": [r.completion_tokens for r in rs],
    }, f"{n} client(s): {toks} tok in {wall:.2f} s = {toks / wall:.1f} tok/s"


def step_turns(srv: Server, wl: Workload, shared: dict) -> StepResult:
    msgs = [{"role": "user", "content": shared["prompt"]}]
    r1 = one_reply(srv, wl, wl.chat(msgs, 24))
    msgs2 = msgs + [{"role": "assistant", "content": r1.text},
                    {"role": "user", "content": "Now say it in five words."}]
    r2 = one_reply(srv, wl, wl.chat(msgs2, 4))
    t1, t2 = r1.ttft, r2.ttft
    vals: dict[str, float] = {}
    if t1 and t2:
        vals = {"turn1_ttft_ms": t1 * 1000, "turn2_ttft_ms": t2 * 1000,
                "turn2_over_turn1": t2 / t1}
    return vals, {
        "turn1_prompt_tokens": r1.prompt_tokens, "turn2_prompt_tokens": r2.prompt_tokens,
        "turn1_ttft_s": t1, "turn2_ttft_s": t2, "turn1_completion_tokens": r1.completion_tokens,
        "turn1_timings": r1.timings, "turn2_timings": r2.timings,
    }, (f"turn 1 TTFT {fmt(t1 and t1 * 1000, 0)} ms ({r1.prompt_tokens} tok), "
        f"turn 2 TTFT {fmt(t2 and t2 * 1000, 0)} ms ({r2.prompt_tokens} tok)")


def step_health(srv: Server, wl: Workload, shared: dict) -> StepResult:
    if wl.health_tool == "wrk":
        h = health_rps_wrk(wl.host, srv.port, wl.health_seconds, wl.health_conns)
    else:
        h = run_async(lambda: health_rps_python(wl.host, srv.port, wl.health_seconds,
                                                wl.health_conns))
    return {"health_rps": h["rps"]}, h, (
        f"/health {h['rps']:.0f} req/s ({h['tool']}, non-2xx {h['non_2xx']}, "
        f"socket errors {h['socket_errors'] or 0})")


Step = tuple[str, Callable[[Server, Workload, dict], StepResult], Callable[[], dict]]


def round_steps(wl: Workload) -> list[Step]:
    """The steps of one round: name, function, and a factory of the inputs that
    both servers share (called again for a retried step, so that a retry never
    meets its own prompt in the cache)."""

    def doc() -> dict:
        return {"prompt": wl.doc_prompt()}

    def starts(n: int) -> Callable[[], dict]:
        def make() -> dict:
            base = wl.fresh_seed() % 50
            return {"clients": n, "starts": [100 * (k + 1) + base for k in range(n)]}
        return make

    steps: list[Step] = []
    steps += [("generation", step_generation, dict) for _ in range(wl.samples)]
    steps += [("generation-sampled", step_generation, lambda: {"sampling": SAMPLED})
              for _ in range(wl.samples)]
    steps += [("prefill", step_prefill, doc) for _ in range(wl.samples)]
    steps += [(f"aggregate-{n}", step_aggregate, starts(n)) for n in wl.concurrency]
    steps += [("turns", step_turns, doc) for _ in range(wl.samples)]
    if wl.health_seconds > 0:
        steps.append(("health", step_health, dict))
    return steps

