"""N-gram speculation: drafts from the history, chosen by expected gain, never changing a reply."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    EngineConfig,
    ModelConfig,
    SamplingParams,
)
from igllama.engine.ngram_memory import NgramMemory
from igllama.engine.speculation import DecodeCosts, Drafter, SpecConfig
from tests.engine.conftest import run
from tests.models import QWEN_CODER

# Costs under which any likely draft pays (a batch of 64 costs twice one token),
# and under which none does (every token costs the same, batched or not).
CHEAP = {1: 10.0, 64: 20.0}
DEAR = {1: 10.0, 64: 640.0}


def drafter(tokens: list[int], costs: dict[int, float] = CHEAP, **config: int) -> Drafter:
    return Drafter(SpecConfig(**config), DecodeCosts(costs), tokens)  # type: ignore[arg-type]


def test_the_draft_is_what_followed_the_tail_before() -> None:
    history = [5, 6, 7, 8, 9, 10, 11, 1, 2, 5, 6, 7]
    assert drafter(history).propose(3) == [8, 9, 10]
    assert drafter([1, 2, 3, 4, 5, 6]).propose(8) == []  # the tail never occurred before


def test_the_latest_occurrence_wins_and_the_index_follows_new_tokens() -> None:
    d = drafter([1, 2, 3, 40, 1, 2, 3, 50, 9, 1, 2])
    d.append(3)
    assert d.propose(1) == [50]


def test_a_loop_is_drafted_past_the_history_s_end() -> None:
    """A reply caught in a loop goes on as it went: a draft longer than the loop's period."""
    d = drafter([9, 1, 2, 3, 1, 2, 3, 1, 2, 3])
    d.record(8, 8)  # (its drafts were accepted: it may draft long)
    assert d.propose(8) == [1, 2, 3, 1, 2, 3, 1, 2]


def test_a_draft_is_only_made_when_it_pays() -> None:
    copy = list(range(100, 140)) + list(range(100, 130))  # a long copy in progress
    first = drafter(copy, draft_max=64)
    assert 1 <= len(first.propose(64)) <= 4  # a first guess stays short
    first.record(4, 4)
    assert len(first.propose(64)) >= 8  # backed by accepted tokens, it grows
    capped = drafter(copy, draft_max=3)
    capped.record(3, 3)
    assert len(capped.propose(64)) == 3  # --spec-draft-max
    assert drafter(copy, DEAR).propose(64) == []
    # In a batch of 8 sequences a draft slows all of them: the same draft must promise more.
    d = drafter(copy, {1: 10.0, 8: 20.0, 16: 40.0, 72: 300.0}, draft_max=64)
    d.record(8, 8)
    assert len(d.propose(64, batch_tokens=1)) > len(d.propose(64, batch_tokens=8))


def test_a_sequence_that_keeps_missing_stops_drafting_until_its_misses_fade() -> None:
    history = [7, 1, 2, 3, 4, 9, 9, 9, 1, 2, 3, 4]  # a short match: a guess
    d = drafter(history, {1: 10.0, 2: 11.0, 4: 12.0, 64: 30.0})
    assert d.propose(4)
    for _ in range(6):
        d.record(4, 0)
    assert d.propose(4) == []
    for token in [8] * 150 + [1, 2, 3, 4]:  # the text moves on; the same tail comes back
        d.append(token)
    assert d.propose(4)


def test_drafts_that_are_always_accepted_grow() -> None:
    """A copy whose short drafts are all accepted must earn longer ones (the estimate of
    acceptance must not be pinned by the drafts' own length)."""
    copy = list(range(100, 300)) + list(range(100, 140))
    d = drafter(copy, {1: 20.0, 4: 50.0, 8: 100.0, 16: 130.0, 64: 400.0}, draft_max=64)
    lengths = []
    for _ in range(6):
        draft = d.propose(64)
        lengths.append(len(draft))
        d.record(len(draft), len(draft))
        for token in draft + [draft[-1] + 1]:
            d.append(token)
    assert lengths[0] >= 1 and lengths[-1] >= 16, lengths


def test_a_reply_written_again_is_drafted_from_the_memory_of_earlier_replies() -> None:
    memory = NgramMemory(1000, key=4, context=16)
    prompt = list(range(1, 21))
    reply = list(range(500, 540))
    memory.remember(prompt + reply, len(prompt))
    again = Drafter(SpecConfig(), DecodeCosts(CHEAP), prompt, memory)  # the same prompt, asked again
    first = again.propose(64)
    assert first and first == reply[:len(first)]
    again.record(len(first), len(first))  # accepted: the next draft may be longer
    for token in reply[:36]:
        again.append(token)
    assert again.propose(64) == reply[36:]  # a draft ends where the remembered reply ended
    other = Drafter(SpecConfig(), DecodeCosts(CHEAP), list(range(900, 920)) + prompt[-3:], memory)
    assert other.propose(64) == []  # three tokens in common are no copy
    assert Drafter(SpecConfig(), DecodeCosts(CHEAP), prompt).propose(64) == []  # no memory, no match


def test_the_memory_keeps_the_newest_replies_within_its_capacity() -> None:
    memory = NgramMemory(100, key=4, context=4)
    for i in range(10):
        memory.remember([1000 + i] * 4 + list(range(100 * i, 100 * i + 30)), 4)
        assert len(memory) <= 100
    newest = [1009] * 4
    assert memory.continuation(memory.find(newest, 32)[0], 5) == [900, 901, 902, 903, 904]
    assert memory.find([1000] * 4, 32) == (-1, 0)  # the oldest is gone


def test_costs_follow_what_decodes_take_while_serving() -> None:
    costs = DecodeCosts({1: 30.0, 4: 40.0})  # the one-token decode timed while something else ran
    for _ in range(40):
        costs.observe(1, 15.0)
    costs.observe(3, 500.0)  # a size that was not timed at start changes nothing
    assert abs(costs.ms(1) - 15.0) < 0.5 and costs.ms(4) == 40.0


def test_costs_interpolate_between_measured_sizes() -> None:
    costs = DecodeCosts({1: 10.0, 4: 16.0, 16: 40.0})
    assert costs.ms(1) == 10.0 and costs.ms(2) == 12.0 and costs.ms(10) == 28.0
    assert costs.ms(32) == 72.0  # beyond the last, on the line through the last two


def test_long_decodes_are_guessed_at_start_then_learnt() -> None:
    # A 65-token decode is never timed at start (it would keep ~130 MB of logits resident).
    timed: list[int] = []
    costs = DecodeCosts()
    costs.measure(lambda n: timed.append(n))
    assert max(timed) == 17 and 65 not in timed
    guess = costs.ms(65)
    assert guess >= costs.ms(33) >= costs.ms(17)
    for _ in range(40):
        costs.observe(65, guess * 3)  # the real cost, seen while serving
    assert abs(costs.ms(65) - guess * 3) < 0.05 * guess


# -- on the real models: the reply is the same with speculation on and off

CODE = "\n".join(f"class Shape{i}:\n    def area(self):\n        return {i} * self.size\n" for i in range(8))
WORKLOADS = {
    "repeat": "Repeat this text word for word:\n\n" + " ".join(
        f"The lighthouse keeper counted {i} ships on day {i + 3}." for i in range(8)),
    "code edit": "Rename every class ShapeN to FormN and output the whole file:\n\n" + CODE,
    "free chat": "Write a short story about a cat who learns to fly.",
}


@pytest.fixture(scope="module", params=["demo", "qwen"])
def one_thread(request: pytest.FixtureRequest, model_path: str) -> Iterator[Engine]:
    """One llama.cpp thread and drafts of at most 6 tokens: then a lone query's attention is
    computed as a batched one's (with more threads, past ~200 tokens of context they differ;
    from 8 queries on, flash attention takes a tiled path; docs/how-it-works.md, Determinism),
    so a reply must be exactly the same with drafts as without, at any length."""
    path = model_path if request.param == "demo" else str(QWEN_CODER.path())
    engine = Engine(EngineConfig(ModelConfig(path), n_ctx=4096, n_batch=256, n_slots=2, n_threads=1,
                                 n_threads_batch=1, spec=SpecConfig(draft_max=6)))
    yield engine
    engine.close()


async def cheap(engine: Engine) -> None:
    """Make every likely draft pay, so the test sees speculation work on any machine."""
    await run(engine, CompletionRequest((ChatMessage("user", "Hi"),), 2))  # the costs are measured by now
    assert engine.costs is not None, "speculation is on by default"
    engine.costs.set(CHEAP)


async def test_speculation_never_changes_a_greedy_reply(one_thread: Engine) -> None:
    await cheap(one_thread)
    drafted = 0
    for name, text in WORKLOADS.items():
        request = CompletionRequest((ChatMessage("user", text),), 128, SamplingParams(temperature=0.0),
                                    cache_prompt=False)
        plain, done_plain = await run(one_thread, replace(request, speculate=False))
        fast, done_fast = await run(one_thread, request)
        assert "".join(fast) == "".join(plain), name
        assert done_fast.completion_tokens == done_plain.completion_tokens and done_plain.drafted == 0
        assert done_fast.accepted <= done_fast.drafted
        drafted += done_fast.drafted
    assert drafted > 0, "nothing was drafted: the test proved nothing"


async def test_a_reply_asked_for_again_is_drafted_from_the_first(one_thread: Engine) -> None:
    """Free chat has little to copy from its own history; the same question asked again (a
    regenerated answer) drafts from the reply it wrote the first time, and writes the same reply."""
    await cheap(one_thread)
    request = CompletionRequest((ChatMessage("user", WORKLOADS["free chat"] + " Make it sad."),), 96,
                                SamplingParams(temperature=0.0), cache_prompt=False)
    first, done_first = await run(one_thread, request)
    again, done_again = await run(one_thread, request)
    assert "".join(again) == "".join(first)
    # Every token drafted the second time is one the model writes (the memory holds its reply).
    assert done_again.drafted == done_again.accepted >= max(done_first.accepted, done_again.completion_tokens // 2), \
        (done_first, done_again)


async def test_sampled_replies_keep_their_seed(one_thread: Engine) -> None:
    """A seeded sampled reply draws the same tokens: drafts are accepted only where the sampler agrees."""
    await cheap(one_thread)
    sampling = SamplingParams(temperature=0.8, seed=11)
    request = CompletionRequest((ChatMessage("user", WORKLOADS["repeat"]),), 96, sampling, cache_prompt=False)
    plain, _ = await run(one_thread, replace(request, speculate=False))
    fast, done = await run(one_thread, request)
    assert "".join(fast) == "".join(plain)
    assert done.drafted > 0


def test_nobody_drafts_once_more_than_two_sequences_run() -> None:
    """Then the decode is compute-bound: with 8 streams drafts cost 17% of the throughput
    (docs/speculation.md)."""
    from types import SimpleNamespace

    from igllama.engine.prompt_cache import PromptCache
    from igllama.engine.scheduler import MAX_DRAFTING_STREAMS, Scheduler

    copy = list(range(100, 140)) + list(range(100, 130))
    scheduler = Scheduler(4, 1024, 64, 0, None, PromptCache(0))  # type: ignore[arg-type]
    seq = SimpleNamespace(drafter=drafter(copy), max_tokens=100, n_generated=0, slot=SimpleNamespace(tokens=copy))
    assert scheduler._draft(seq, MAX_DRAFTING_STREAMS, MAX_DRAFTING_STREAMS, 0, 64)  # type: ignore[arg-type]
    assert scheduler._draft(seq, MAX_DRAFTING_STREAMS + 1, MAX_DRAFTING_STREAMS + 1, 0, 64) == []  # type: ignore[arg-type]
    # Nor beside others' prompts being read: a draft would delay their first tokens.
    assert scheduler._draft(seq, MAX_DRAFTING_STREAMS + 1, 1, 0, 64) == []  # type: ignore[arg-type]
