"""Generation against the real demo model, temperature 0."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from igllama.engine import (
    Engine,
    EngineConfig,
    Finished,
    ModelConfig,
    PromptTooLongError,
    SamplingParams,
    TextDelta,
)
from igllama.engine.speculation import SpecConfig
from tests.conftest import late_stop_string
from tests.engine.conftest import NEVER_STOP, ask, run

PROMPT = "Write a short poem about the sea."
OTHERS = ["What is the capital of France?", "Name three colors.", "Tell me about the moon."]


async def test_greedy_output_is_deterministic(engine: Engine) -> None:
    # Plain greedy (the argmax path), so the end-of-generation tokens cannot be
    # banned: the reply may end before max_tokens on some machine.
    first, done = await run(engine, ask(PROMPT, cache_prompt=False))
    second, done_again = await run(engine, ask(PROMPT, cache_prompt=False))
    assert first, "the greedy reply was empty"
    assert "".join(first) == "".join(second)
    assert (done_again.finish_reason, done_again.completion_tokens) == (done.finish_reason, done.completion_tokens)
    assert done.finish_reason == ("length" if done.completion_tokens == 24 else "stop")
    assert done.prompt_tokens > 5
    # Served from the prefix cache, the same request is just as repeatable.
    cached = [await run(engine, ask(PROMPT)) for _ in range(2)]
    assert cached[0][1].cached_tokens == cached[0][1].prompt_tokens - 1
    assert "".join(cached[0][0]) == "".join(cached[1][0])


@pytest.fixture(scope="module")
def exact_engine(model_path: str) -> Iterator[Engine]:
    """One llama.cpp thread and no drafts: the setting where a reply is promised not to
    depend on what shares its batch. With two threads llama.cpp splits attention's work
    differently for one sequence and for several, and on a busy machine the batches a
    request lands in change with timing, so a near-tie can flip (a CI run did: 'siebie'
    alone, 'mendatang' beside three others; docs/how-it-works.md, Determinism)."""
    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=2048, n_batch=256, n_slots=4,
                                 n_threads=1, n_threads_batch=1, spec=SpecConfig(enabled=False)))
    yield engine
    engine.close()


async def test_output_alone_equals_output_beside_three_others(exact_engine: Engine) -> None:
    # Without the prefix cache, each prompt is prefilled the same way both times,
    # so any difference would come from sharing the batch and the KV pool.
    prompts = [PROMPT, *OTHERS]
    alone = ["".join((await run(exact_engine, ask(p, max_tokens=40, cache_prompt=False)))[0]) for p in prompts]
    together = await asyncio.gather(
        *(run(exact_engine, ask(p, max_tokens=40, cache_prompt=False)) for p in prompts)
    )
    assert ["".join(deltas) for deltas, _ in together] == alone


async def test_eight_requests_on_four_slots_all_complete(engine: Engine) -> None:
    prompts = [f"Count from {i} to {i + 5}." for i in range(8)]
    results = await asyncio.gather(*(run(engine, ask(p, max_tokens=12, sampling=NEVER_STOP)) for p in prompts))
    for deltas, done in results:
        assert (done.finish_reason, done.completion_tokens) == ("length", 12)
        assert "".join(deltas)


async def test_second_turn_reuses_the_prefix_cache(engine: Engine) -> None:
    from igllama.engine import ChatMessage, CompletionRequest

    story = " ".join(f"Sentence {i} of a long story about a lighthouse keeper." for i in range(20))
    turn1 = (ChatMessage("user", story + " Summarise it."),)
    deltas, first = await run(engine, CompletionRequest(turn1, max_tokens=16, sampling=SamplingParams(temperature=0)))
    turn2 = turn1 + (ChatMessage("assistant", "".join(deltas)), ChatMessage("user", "Shorter, please."))
    _, second = await run(engine, CompletionRequest(turn2, max_tokens=8, sampling=SamplingParams(temperature=0)))
    prefilled = second.prompt_tokens - second.cached_tokens
    assert second.cached_tokens >= first.prompt_tokens
    assert prefilled < 0.2 * second.prompt_tokens


async def test_cancelling_frees_the_slot_within_a_step(model_path: str) -> None:
    from igllama.engine import EngineConfig, ModelConfig

    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=512, n_batch=128, n_slots=1))
    try:
        stream = engine.generate(ask(PROMPT, max_tokens=400, sampling=NEVER_STOP))
        async for event in stream:
            if isinstance(event, TextDelta) and engine.steps >= 3:
                break
        await stream.aclose()
        steps_at_cancel = engine.steps
        # The only slot is free again: the next request starts and finishes at once.
        next_request = ask(OTHERS[0], max_tokens=4, sampling=NEVER_STOP)
        _, done = await asyncio.wait_for(run(engine, next_request), timeout=30)
        assert done.completion_tokens == 4
        assert engine.steps - steps_at_cancel <= 1 + 4 + 1  # at most one more step for the cancelled one
        assert not engine.scheduler.running
    finally:
        engine.close()


async def test_stop_string_across_token_boundaries(engine: Engine) -> None:
    request = ask(PROMPT, max_tokens=32, sampling=NEVER_STOP, cache_prompt=False)
    deltas, _ = await run(engine, request)
    text = "".join(deltas)
    # A stop string that crosses from one delta into the next where it first
    # appears, taken from this machine's reply as late as it can be.
    boundaries = [sum(len(d) for d in deltas[:k]) for k in range(1, len(deltas))]
    start, stop = late_stop_string(text, max_len=len(text), straddling=boundaries)
    cut, done = await run(engine, replace(request, stop=(stop,)))
    assert "".join(cut) == text[:start]
    assert stop not in "".join(cut)
    assert done.finish_reason == "stop"


async def test_max_tokens_gives_length_and_eog_gives_stop(engine: Engine) -> None:
    _, done = await run(engine, ask("Hi", max_tokens=3, sampling=NEVER_STOP))
    assert (done.finish_reason, done.completion_tokens) == ("length", 3)
    # Ban nothing, but make the end-of-turn token overwhelmingly likely: the reply stops at once.
    end_of_turn = engine.model.tokenize("<end_of_turn>", add_special=False)[0]
    sampling = SamplingParams(temperature=0.0, logit_bias=((end_of_turn, 100.0),))
    deltas, done = await run(engine, ask("Hi", max_tokens=10, sampling=sampling))
    assert (done.finish_reason, done.completion_tokens, deltas) == ("stop", 0, [])


async def test_plain_greedy_picks_what_llama_cpps_greedy_sampler_picks(engine: Engine) -> None:
    # Plain greedy takes an argmax in numpy; a neutral bias sends the same
    # request through llama.cpp's sampler chain instead. The replies must agree,
    # down to where they end (plain greedy cannot ban end-of-generation tokens,
    # so that is the model's choice).
    argmax, argmax_done = await run(engine, ask(PROMPT, max_tokens=48, cache_prompt=False))
    unused = engine.model.tokenize("lighthouse", add_special=False)[0]
    chain = SamplingParams(temperature=0.0, logit_bias=((unused, 0.0),))
    sampled, sampled_done = await run(engine, ask(PROMPT, max_tokens=48, cache_prompt=False, sampling=chain))
    assert argmax, "the greedy reply was empty"
    assert "".join(argmax) == "".join(sampled)
    assert (argmax_done.finish_reason, argmax_done.completion_tokens) == (
        sampled_done.finish_reason, sampled_done.completion_tokens
    )


async def test_logit_bias_and_seeded_sampling(engine: Engine) -> None:
    greedy, _ = await run(engine, ask(PROMPT, max_tokens=16, sampling=NEVER_STOP, cache_prompt=False))
    # Ban the token behind one delta of this machine's reply: the first whose
    # text is a single token (a delta's text may tokenize to other tokens
    # than the one the model chose).
    k, token = next(
        (k, tokens[0]) for k, delta in enumerate(greedy)
        if len(tokens := engine.model.tokenize(delta, add_special=False, parse_special=False)) == 1
    )
    banned = replace(NEVER_STOP, logit_bias=(*NEVER_STOP.logit_bias, (token, float("-inf"))))
    biased, _ = await run(engine, ask(PROMPT, max_tokens=16, sampling=banned, cache_prompt=False))
    assert biased[:k] == greedy[:k]
    assert biased[k] != greedy[k]
    hot = SamplingParams(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=1234)
    a, _ = await run(engine, ask(PROMPT, max_tokens=16, sampling=hot))
    b, _ = await run(engine, ask(PROMPT, max_tokens=16, sampling=hot))
    assert "".join(a) == "".join(b)


async def test_prompt_longer_than_context_is_refused_with_both_numbers(engine: Engine) -> None:
    with pytest.raises(PromptTooLongError) as caught:
        await run(engine, ask("lighthouse " * 3000))
    message = str(caught.value)
    assert str(engine.n_ctx) in message and str(caught.value.n_prompt) in message
    assert caught.value.n_prompt > engine.n_ctx


async def test_filling_the_context_ends_with_length(model_path: str) -> None:
    from igllama.engine import EngineConfig, ModelConfig

    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, n_batch=128, n_slots=2))
    try:
        prompt = "Repeat after me: " + "la " * 150
        _, done = await run(engine, ask(prompt, max_tokens=1000, sampling=NEVER_STOP))
        assert done.finish_reason == "length"
        assert done.prompt_tokens + done.completion_tokens <= engine.n_ctx + 1
        # The engine is still healthy afterwards.
        _, after = await run(engine, ask("Hi", max_tokens=2, sampling=NEVER_STOP))
        assert after.completion_tokens == 2
    finally:
        engine.close()


async def test_timings_are_reported(engine: Engine) -> None:
    start = time.perf_counter()
    _, done = await run(engine, ask(OTHERS[1] + " Quickly.", max_tokens=16, sampling=NEVER_STOP))
    wall_ms = (time.perf_counter() - start) * 1000
    assert 0 < done.prefill_ms < wall_ms
    assert 0 < done.generation_ms < wall_ms
    assert done.generation_tokens_per_s > 0 and done.prefill_tokens_per_s > 0


@pytest.mark.parametrize("cache_ram_mib", [64, 0])
async def test_a_conversation_keeps_its_cache_while_another_uses_the_slot(model_path: str, cache_ram_mib: int) -> None:
    from igllama.engine import ChatMessage, CompletionRequest, EngineConfig, ModelConfig

    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=1024, n_slots=1, cache_ram_mib=cache_ram_mib))
    try:
        greedy = SamplingParams(temperature=0)
        story = " ".join(f"Sentence {i} about a lighthouse keeper." for i in range(15))
        turn1 = (ChatMessage("user", story),)
        deltas, first = await run(engine, CompletionRequest(turn1, max_tokens=8, sampling=greedy))
        await run(engine, ask("An unrelated question about the weather in Paris?", max_tokens=8))
        # Only one slot: the other conversation took it. The first one's state comes back from RAM.
        turn2 = turn1 + (ChatMessage("assistant", "".join(deltas)), ChatMessage("user", "And then?"))
        _, second = await run(engine, CompletionRequest(turn2, max_tokens=4, sampling=greedy))
        if cache_ram_mib:
            assert second.cached_tokens >= first.prompt_tokens
        else:
            assert second.cached_tokens < 10  # just the chat header, shared by every prompt
        # Either way only the slot in use holds KV cells.
        assert engine.scheduler.cells_used <= second.prompt_tokens + second.completion_tokens
    finally:
        engine.close()


async def test_requests_sharing_a_full_pool_all_finish(model_path: str) -> None:
    """Two conversations return at once, one from a slot and one from the RAM
    cache, and together need the whole pool: both must finish, not stall."""
    from igllama.engine import ChatMessage, CompletionRequest, EngineConfig, ModelConfig

    engine = Engine(EngineConfig(ModelConfig(model_path), n_ctx=1024, n_batch=512, n_slots=2))
    try:
        greedy = SamplingParams(temperature=0)

        def request(turns: list[tuple[str, str]], max_tokens: int) -> CompletionRequest:
            return CompletionRequest(tuple(ChatMessage(r, c) for r, c in turns), max_tokens=max_tokens, sampling=greedy)

        x = [("user", "List these words: " + " ".join(f"x{i}" for i in range(100)))]
        y = [("user", "Count these: " + " ".join(f"y{i}" for i in range(65)))]
        for turns in (x, y):
            await run(engine, request(turns, 1))
        x2 = [*x, ("assistant", "ok"), ("user", "hi")]
        y2 = [*y, ("assistant", "ok"), ("user", " ".join(f"w{i}" for i in range(165)))]
        results = await asyncio.wait_for(
            asyncio.gather(run(engine, request(y2, 5)), run(engine, request(x2, 5))), timeout=60
        )
        for _, done in results:
            assert (done.finish_reason, done.completion_tokens) in {("length", 5)} or done.finish_reason == "stop"
    finally:
        engine.close()


def test_more_slots_than_the_batch_holds_is_refused(model_path: str) -> None:
    from igllama.engine import EngineConfig, ModelConfig, ModelLoadError

    with pytest.raises(ModelLoadError, match="8 slots cannot exceed the batch size"):
        Engine(EngineConfig(ModelConfig(model_path), n_ctx=256, n_batch=4, n_slots=8))


async def collect(stream) -> tuple[str, Finished]:  # type: ignore[no-untyped-def]
    text = []
    async for event in stream:
        if isinstance(event, TextDelta):
            text.append(event.text)
        else:
            return "".join(text), event
    raise AssertionError("the stream ended without a Finished event")


async def test_n_choices_prefill_their_prompt_once(engine: Engine) -> None:
    request = ask("Invent a name for a red boat, then explain it.", max_tokens=10,
                  sampling=replace(NEVER_STOP, temperature=0.9, seed=5))
    streams = await engine.submit_choices(request, 3)
    results = await asyncio.gather(*(collect(stream) for stream in streams))
    ends = [done for _, done in results]
    assert ends[0].cached_tokens < ends[0].prompt_tokens - 1  # the first choice prefilled the prompt
    # The other two decode only the last prompt token, on the first one's cells.
    assert [done.cached_tokens for done in ends[1:]] == [ends[0].prompt_tokens - 1] * 2
    assert all((done.finish_reason, done.completion_tokens) == ("length", 10) for done in ends)
    assert len({text for text, _ in results}) > 1, "three seeded choices came out identical"


async def test_a_request_shares_the_prefix_another_one_is_decoding(engine: Engine) -> None:
    from igllama.engine import ChatMessage, CompletionRequest

    system = ChatMessage("system", " ".join(f"Rule {i}: answer briefly and politely." for i in range(30)))
    params = replace(NEVER_STOP, temperature=0)
    first = await engine.submit(CompletionRequest((system, ChatMessage("user", "Hello!")), 40, params))
    events = aiter(first)
    await anext(events)  # the first request is decoding: its slot holds the system prompt
    _, second = await run(engine, CompletionRequest((system, ChatMessage("user", "Goodbye!")), 4, params))
    async for _ in events:
        pass
    # Only the user turn that differs is prefilled; the system prompt's cells are shared.
    assert second.prompt_tokens - second.cached_tokens < 10, second


async def test_deltas_carry_their_token_ids_when_asked(engine: Engine) -> None:
    # llama-server's `tokens` / `return_tokens`: the ids of exactly the tokens of the reply's text.
    request = ask(PROMPT, max_tokens=12, sampling=NEVER_STOP, return_tokens=True)
    tokens: list[int] = []
    texts: list[str] = []
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            tokens += event.tokens
            texts.append(event.text)
            assert event.tokens or not event.text  # text comes with the token that released it
        else:
            done = event
    assert len(tokens) == done.completion_tokens == 12
    assert b"".join(engine.model.piece(t) for t in tokens).decode() == "".join(texts)
    async for event in engine.generate(replace(request, return_tokens=False)):
        assert isinstance(event, Finished) or event.tokens == ()


async def test_a_request_runs_on_the_slot_it_asks_for(engine: Engine) -> None:
    # llama-server's `id_slot`; the final event names the slot that served the request.
    for slot in (3, 0, 2, 1):
        _, done = await run(engine, ask("Hi", max_tokens=2, slot_id=slot))
        assert done.slot == slot
    _, done = await run(engine, ask("Hi", max_tokens=2))
    assert 0 <= done.slot < engine.config.n_slots
