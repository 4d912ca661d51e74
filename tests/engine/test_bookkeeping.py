"""The engine thread's bookkeeping under random interleavings, without a model.

The real `Worker`, `Scheduler` and `PromptCache` run against a fake KV memory
that records which positions each sequence holds, saves states the way
llama.cpp does (a sliding-window layer keeps only the cells its window still
reaches), can refuse a restore, and can fail a decode. Thousands of random
submits, cancels (in every state), steps and failures run with a tiny prompt
cache; after every operation the invariants a client depends on are checked:
each request is in exactly one place, every request hears exactly one end,
cells are accounted for, and the cache's size is the sum of its entries.
"""

from __future__ import annotations

import random
from typing import Any, ClassVar

import pytest

from igllama.engine.errors import EngineError
from igllama.engine.prompt_cache import PromptCache
from igllama.engine.runner import DecodeError
from igllama.engine.scheduler import Scheduler
from igllama.engine.sequence import Finished, Sequence, Status, TextDelta
from igllama.engine.text import TextPipeline
from igllama.engine.worker import Worker

EOG = 0
BYTES_PER_CELL = 10


class FakeState:
    def __init__(self, positions: list[int], window_floor: int) -> None:
        self.positions = positions
        self.window_floor = window_floor

    def __len__(self) -> int:
        return BYTES_PER_CELL * len(self.positions)


class FakeMemory:
    """The `Runner` as the worker and scheduler use it, with cells instead of tensors.

    `cells` are the positions the full-attention layers hold; on a
    sliding-window model `floor` is the lowest position the window layers
    hold (they hold everything from there up), None when they hold nothing.
    """

    def __init__(self, rng: random.Random, n_ctx: int, n_swa: int) -> None:
        self.rng = rng
        self.n_ctx = n_ctx
        self.n_swa = n_swa
        self.cells: dict[int, list[int]] = {}  # seq_id -> positions held, ascending
        self.floor: dict[int, int | None] = {}
        self.batch: list[tuple[int, int, int]] = []  # (seq_id, pos, token)
        self.ctx = None
        self.fail_rate = 0.0

    # KvMemory
    def remove(self, seq_id: int, from_pos: int) -> bool:
        self.cells[seq_id] = [p for p in self.cells.get(seq_id, []) if p < from_pos]
        floor = self.floor.get(seq_id)
        if floor is not None and floor >= from_pos:
            self.floor[seq_id] = None
        return True

    def min_position(self, seq_id: int) -> int:
        if not self.cells.get(seq_id):
            return -1
        floor = self.floor.get(seq_id, 0) if self.n_swa else 0
        return -1 if floor is None else floor

    def save(self, seq_id: int) -> Any:
        held = self.cells.get(seq_id, [])
        floor = self.min_position(seq_id)
        if self.n_swa and held and floor >= 0:
            # llama.cpp's state_write skips the cells the window no longer reaches.
            floor = max(floor, held[-1] - self.n_swa + 1)
        return FakeState(list(held), floor)

    def restore(self, seq_id: int, state: Any) -> bool:
        if self.cells.get(seq_id):
            raise AssertionError(f"restore into sequence {seq_id}, which still holds cells")
        if self.rng.random() < 0.1:
            return False  # llama.cpp found no room for it
        self.cells[seq_id] = list(state.positions)
        self.floor[seq_id] = state.window_floor if state.window_floor >= 0 else None
        return True

    def copy(self, source: int, target: int, n: int) -> None:
        if self.cells.get(target):
            raise AssertionError(f"copy into sequence {target}, which still holds cells")
        self.cells[target] = [p for p in self.cells.get(source, []) if p < n]
        floor = self.floor.get(source)
        self.floor[target] = floor if floor is not None and floor < n else None

    def clear_memory(self) -> None:
        self.cells.clear()
        self.floor.clear()

    # batches
    def clear_batch(self) -> None:
        self.batch = []

    def add_tokens(self, seq_id: int, first_pos: int, tokens: list[int], logits_for_last: bool) -> int:
        self.batch += [(seq_id, first_pos + i, t) for i, t in enumerate(tokens)]
        return len(self.batch) - 1

    def decode(self) -> None:
        if self.rng.random() < self.fail_rate:
            raise DecodeError(self.rng.choice([1, 1, -3]), "injected failure")
        used = sum(len(c) for c in self.cells.values())
        if used + len(self.batch) > self.n_ctx:
            raise DecodeError(1, "no room in the KV cache")
        for seq_id, pos, _ in self.batch:
            held = self.cells.setdefault(seq_id, [])
            expected = held[-1] + 1 if held else 0
            if pos != expected:
                raise AssertionError(f"sequence {seq_id} decodes position {pos}, its cells end at {expected - 1}")
            if not held:
                self.floor[seq_id] = 0
            floor = self.floor.get(seq_id)
            if self.n_swa and held and (floor is None or floor > max(0, pos - self.n_swa + 1)):
                raise AssertionError(f"sequence {seq_id} attends to positions its window layers no longer hold")
            if floor is None:
                self.floor[seq_id] = pos
            held.append(pos)


class FakeModel:
    def is_eog(self, token: int) -> bool:
        return token == EOG

    def piece(self, token: int) -> bytes:
        return b"ab"[token % 2 : token % 2 + 1]


class FakeSampler:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.closed = False

    def sample(self, ctx: Any, index: int) -> int:
        if self.closed:
            raise AssertionError("sampling with a closed sampler")
        return EOG if self.rng.random() < 0.05 else self.rng.randint(1, 3)

    def close(self) -> None:
        self.closed = True


class ImmediateLoop:
    def call_soon_threadsafe(self, fn: Any, *args: Any) -> None:
        fn(*args)


class Client:
    """One request: the events it received."""

    def __init__(self, seq: Sequence) -> None:
        self.seq = seq
        self.events: list[Any] = []
        self.cancelled = False

    def __call__(self, event: Any) -> None:
        self.events.append(event)

    @property
    def ended(self) -> bool:
        return any(isinstance(e, (Finished, EngineError)) for e in self.events)


def new_request(clients: list[Client], prompt: list[int], max_tokens: int, sampler: Any,
                reuse_cache: bool = True, leader: Sequence | None = None) -> Sequence:
    seq = Sequence(len(clients), prompt, max_tokens, sampler, TextPipeline((), False), None, reuse_cache,
                   leader=leader)
    client = Client(seq)
    seq.sink = client
    clients.append(client)
    return seq


def serve_alone(worker: Worker, memory: FakeMemory, clients: list[Client], seq: Sequence) -> Any:
    """Submit `seq` and step until nothing is left; its last event."""
    worker.inbox.put(("submit", seq))
    while worker.scheduler.has_work or not worker.inbox.empty():
        worker.run_once()
        check_invariants(worker, memory, clients)
    return clients[seq.id].events[-1]


def make_worker(rng: random.Random, n_slots: int, n_ctx: int, n_swa: int, cache_bytes: int) -> tuple[Worker, FakeMemory]:
    memory = FakeMemory(rng, n_ctx, n_swa)
    scheduler = Scheduler(n_slots, n_ctx, 16, n_swa, memory, PromptCache(cache_bytes))
    worker = Worker(FakeModel(), memory, scheduler, embedder=None)  # type: ignore[arg-type]
    worker.loop = ImmediateLoop()  # type: ignore[assignment]
    return worker, memory


def submit(worker: Worker, rng: random.Random, prompts: list[list[int]], clients: list[Client]) -> None:
    if prompts and rng.random() < 0.6:
        base = rng.choice(prompts)  # the same prompt again, or a continuation of it
        prompt = base[: rng.randint(1, len(base))] + [rng.randint(1, 9) for _ in range(rng.randint(0, 6))]
    else:
        prompt = [rng.randint(1, 9) for _ in range(rng.randint(1, 40))]
    # The engine refuses prompts that cannot fit before they reach the worker.
    prompt = prompt[: worker.scheduler.n_ctx - 2]
    prompts.append(prompt)
    reuse_cache = rng.random() < 0.9
    leader = None
    for _ in range(rng.choice([1, 1, 1, 2, 3])):  # sometimes several choices of one prompt (n > 1)
        seq = new_request(clients, prompt, rng.randint(1, 12), FakeSampler(rng), reuse_cache,
                          leader if reuse_cache else None)
        leader = leader or seq
        worker.inbox.put(("submit", seq))


def check_invariants(worker: Worker, memory: FakeMemory, clients: list[Client]) -> None:
    worker._flush()  # events of the step just run go out with the next decode; count them as heard
    scheduler = worker.scheduler
    waiting, running = list(scheduler.waiting), list(scheduler.running)
    assert len(set(map(id, waiting + running))) == len(waiting) + len(running), "a sequence is queued twice"
    for client in clients:
        seq = client.seq
        places = (seq in waiting) + (seq in running)
        ends = sum(isinstance(e, (Finished, EngineError)) for e in client.events)
        assert ends <= 1, f"request {seq.id} heard {ends} ends"
        if seq.status is Status.FINISHED:
            assert places == 0 and seq.slot is None
            assert client.ended or client.cancelled, f"request {seq.id} finished without telling its client"
        elif seq.status is Status.WAITING:
            assert places == 1 and seq in waiting and not client.ended
        else:
            assert places == 1 and seq in running and not client.ended
            assert seq.slot is not None and seq.slot.sequence is seq
    for slot in scheduler.slots:
        if slot.sequence is not None:
            assert slot.sequence.status in (Status.PREFILLING, Status.DECODING), "a slot holds a finished request"
        held = memory.cells.get(slot.seq_id, [])
        assert len(held) == len(slot.tokens), f"slot {slot.seq_id}: {len(held)} cells for {len(slot.tokens)} tokens"
        assert held == list(range(len(slot.tokens))), f"slot {slot.seq_id} holds positions other than its tokens'"
    assert sum(len(c) for c in memory.cells.values()) <= memory.n_ctx
    cache = scheduler.cache
    assert cache.size == sum(entry.size for entry in cache.entries) <= cache.budget_bytes


@pytest.mark.parametrize("seed", range(12))
def test_random_interleavings_keep_every_request_accounted_for(seed: int) -> None:
    rng = random.Random(seed)
    n_swa = rng.choice([0, 0, 8, 24])
    worker, memory = make_worker(rng, n_slots=rng.randint(1, 4), n_ctx=rng.choice([48, 64, 128]), n_swa=n_swa,
                                 cache_bytes=rng.choice([0, 120, 400, 2000]))
    clients: list[Client] = []
    prompts: list[list[int]] = []
    for _ in range(600):
        memory.fail_rate = 0.02 if rng.random() < 0.3 else 0.0
        roll = rng.random()
        if roll < 0.3:
            submit(worker, rng, prompts, clients)
        elif roll < 0.42 and clients:
            client = rng.choice(clients)  # waiting, running, finished or already cancelled
            client.cancelled = True
            worker.inbox.put(("cancel", client.seq))
        assert worker.run_once()
        check_invariants(worker, memory, clients)
    # Then no more cancels or failures: every request left must end by itself.
    memory.fail_rate = 0.0
    for _ in range(2000):
        if not worker.scheduler.has_work and worker.inbox.empty():
            break
        worker.run_once()
        check_invariants(worker, memory, clients)
    assert not worker.scheduler.has_work, "requests still queued or running after every one could have ended"
    for client in clients:
        assert client.ended or client.cancelled, f"request {client.seq.id} never heard how it ended"
        text = "".join(e.text for e in client.events if isinstance(e, TextDelta))
        finished = [e for e in client.events if isinstance(e, Finished)]
        if finished:
            assert len(text) == finished[0].completion_tokens


def test_an_entry_found_for_admission_survives_the_parking_that_follows() -> None:
    """The reproduction of issue 9: P1, P2, P1 with a cache that holds one state.

    Admitting the second P1 finds P1's saved state; parking P2's idle slot
    then saves P2's state, which used to evict P1's entry before it was taken
    (a ValueError in the engine, every client failed, one request lost)."""
    rng = random.Random(1)
    rng.random = lambda: 0.5  # type: ignore[method-assign] # never refuse a restore
    p1, p2 = list(range(1, 31)), list(range(40, 70))
    worker, memory = make_worker(rng, n_slots=2, n_ctx=128, n_swa=0, cache_bytes=BYTES_PER_CELL * 45)
    clients: list[Client] = []
    ends = [serve_alone(worker, memory, clients, new_request(clients, prompt, 2, FakeSampler(rng)))
            for prompt in (p1, p2, p1)]
    assert all(isinstance(end, Finished) for end in ends), ends
    assert ends[2].cached_tokens == len(p1) - 1


def test_the_choices_of_one_prompt_share_its_prefill() -> None:
    """n > 1: the first choice prefills the prompt; the others wait for it and
    then decode only the last prompt token, on cells shared with it."""
    rng = random.Random(3)
    rng.random = lambda: 0.5  # type: ignore[method-assign]
    worker, memory = make_worker(rng, n_slots=3, n_ctx=256, n_swa=0, cache_bytes=0)
    clients: list[Client] = []
    prompt = list(range(1, 41))
    leader = None
    for _ in range(3):
        seq = new_request(clients, prompt, 4, FakeSampler(rng), leader=leader)
        leader = leader or seq
        worker.inbox.put(("submit", seq))
    fed = []
    while worker.scheduler.has_work or not worker.inbox.empty():
        worker.run_once()
        fed.append(len(memory.batch))
        check_invariants(worker, memory, clients)
    ends = [client.events[-1] for client in clients]
    assert all(isinstance(end, Finished) for end in ends), ends
    assert [end.cached_tokens for end in ends] == [0, len(prompt) - 1, len(prompt) - 1]
    prefilled = sum(fed) - sum(end.completion_tokens for end in ends)
    assert prefilled < len(prompt) + 2 * 2, f"{prefilled} prompt tokens decoded for one shared prompt"


def test_a_long_state_comes_back_for_the_same_prompt_and_for_its_continuation() -> None:
    """Sliding-window states hold only the window: the saved copy must still serve a
    re-sent prompt (a regenerated reply) and the conversation's next turn."""
    rng = random.Random(2)
    rng.random = lambda: 0.5  # type: ignore[method-assign]
    n_swa = 8
    long_prompt = list(range(1, 41))
    worker, memory = make_worker(rng, n_slots=1, n_ctx=256, n_swa=n_swa, cache_bytes=10_000)
    clients: list[Client] = []

    def run(prompt: list[int]) -> Finished:
        sampler = FakeSampler(rng)
        sampler.sample = lambda ctx, index: 1  # type: ignore[method-assign]
        end = serve_alone(worker, memory, clients, new_request(clients, prompt, 4, sampler))
        assert isinstance(end, Finished)
        return end

    run(long_prompt)
    run([50, 51, 52])  # takes the only slot: the long conversation is parked
    assert run(long_prompt).cached_tokens == len(long_prompt) - 1
    run([60, 61, 62])
    continuation = long_prompt + [1, 1, 1, 7, 8]
    assert run(continuation).cached_tokens == len(long_prompt) + 3


def test_a_call_marker_token_reaches_the_parser_only_for_requests_with_tools() -> None:
    """Llama 3.x opens a call with <|python_tag|>, a control token that renders as nothing:
    with tools offered, the engine renders it so the call is found; without, it stays invisible."""
    from igllama.engine.tool_calls import PYTHON_TAG

    call = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    pieces = {1: b"Checking.", 2: b"", **{10 + i: c.encode() for i, c in enumerate(call)}}

    class ScriptedModel(FakeModel):
        call_markers: ClassVar[dict[int, bytes]] = {2: PYTHON_TAG.encode()}

        def piece(self, token: int) -> bytes:
            return pieces[token]

    class Script(FakeSampler):
        def __init__(self) -> None:
            super().__init__(random.Random(0))
            self.tokens = iter([1, 2, *range(10, 10 + len(call)), EOG])

        def sample(self, ctx: Any, index: int) -> int:
            return next(self.tokens)

    for tools, content, calls in [(("get_weather",), "Checking.", 1), ((), "Checking." + call, 0)]:
        rng = random.Random(0)
        rng.random = lambda: 0.5  # type: ignore[method-assign]
        worker, memory = make_worker(rng, n_slots=1, n_ctx=256, n_swa=0, cache_bytes=0)
        worker.model = ScriptedModel()  # type: ignore[assignment]
        clients: list[Client] = []
        seq = new_request(clients, [1, 2, 3], 200, Script())
        seq.text = TextPipeline((), False, tools=tools)
        end = serve_alone(worker, memory, clients, seq)
        text = "".join(e.text for e in clients[0].events if isinstance(e, TextDelta))
        assert (text, len(end.tool_calls)) == (content, calls)
        if calls:
            assert end.finish_reason == "tool_calls" and end.tool_calls[0].name == "get_weather"
