"""Slots, the prefix cache and the choice of what goes into each batch.

N slots share one unified KV pool. Each slot remembers which tokens its KV
sequence holds; a new request goes to the free slot whose tokens share the
longest prefix with its prompt, and only the rest is prefilled. Requests
beyond N wait in a FIFO queue. The scheduler decides; `Runner` executes.

A sequence is always in exactly one place: `waiting` (status WAITING),
`running` (PREFILLING or DECODING, with a slot), or nowhere once FINISHED.
Every method leaves it so, whatever it raises.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from igllama.engine.lora import LoraKey
from igllama.engine.prompt_cache import CachedPrompt, PromptCache, common_prefix_length
from igllama.engine.sequence import Sequence, Status

# Sequences decoding at once beyond which nobody drafts: the decode is then compute-bound.
MAX_DRAFTING_STREAMS = 2


class Slot:
    """One KV-cache sequence id and the tokens whose keys and values it holds."""

    __slots__ = ("last_used", "lora", "n_prompt", "seq_id", "sequence", "tokens")

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.tokens: list[int] = []  # position i of the KV sequence holds tokens[i]
        self.sequence: Sequence | None = None
        self.n_prompt = 0  # the prompt length of the last request served here
        self.last_used = 0
        self.lora: LoraKey = ()  # the LoRA adapters its tokens' KV cells were computed with


@dataclass(slots=True)
class BatchItem:
    """Tokens of one sequence in the next batch; logits wanted for the last one if `wants_logits`."""

    sequence: Sequence
    tokens: list[int]
    wants_logits: bool
    n_draft: int = 0  # drafted tokens after the first (logits wanted at every position)


class KvMemory(Protocol):
    """What the scheduler needs of llama.cpp's KV memory (`Runner` provides it)."""

    def remove(self, seq_id: int, from_pos: int) -> bool:
        """Drop cells from `from_pos` on; False where partial removal is unsupported."""

    def min_position(self, seq_id: int) -> int:
        """The lowest position still held for `seq_id`, -1 if none."""

    def save(self, seq_id: int) -> Any:
        """A copy of the sequence's state, or None."""

    def restore(self, seq_id: int, state: Any) -> bool:
        """Load a saved state into an empty sequence."""

    def copy(self, source: int, target: int, n: int) -> None:
        """Give an empty `target` the cells of `source`'s positions below `n`."""


class Scheduler:
    def __init__(
        self, n_slots: int, n_ctx: int, n_batch: int, n_swa: int, memory: KvMemory, cache: PromptCache
    ) -> None:
        self.slots = [Slot(i) for i in range(n_slots)]
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.n_ctx = n_ctx  # cells in the shared pool; also the most one sequence may hold
        self.n_batch = n_batch
        self.n_swa = n_swa
        self.memory = memory
        self.cache = cache
        self._clock = 0
        self._turn = 0  # which LoRA key's requests the next batch serves, when they differ
        # Rows of logits one batch may ask for prompts' scores (prompt_logprobs.max_scored_rows).
        self.max_scored_rows = n_batch

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def cells_used(self) -> int:
        return sum(len(slot.tokens) for slot in self.slots)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def release(self, seq: Sequence) -> None:
        """Forget a sequence in any state (idempotent); its slot keeps its tokens for reuse."""
        if seq.status is Status.WAITING:
            if seq in self.waiting:
                self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        slot = seq.slot
        if slot is not None:
            if slot.sequence is seq:
                slot.sequence = None
            seq.slot = None
        seq.status = Status.FINISHED

    def discard_slot_state(self, slot: Slot) -> None:
        """After a failure the slot's KV cells are in an unknown state: drop them."""
        slot.tokens = []
        self.memory.remove(slot.seq_id, 0)

    # -- admission

    def next_admission(self) -> Sequence | None:
        """Move the first waiting sequence to a free slot if the pool can hold it.

        The sequence is in `running` with its slot when this returns; `prepare`
        then fills the slot (cache restore, prefix reuse). Keeping the two
        apart means a failure while preparing has one running sequence to
        fail, never a sequence that is in no list at all.
        """
        if not self.waiting:
            return None
        free = [slot for slot in self.slots if slot.sequence is None]
        if not free:
            return None
        seq = self.waiting[0]
        if seq.leader is not None and seq.leader.status in (Status.WAITING, Status.PREFILLING):
            return None  # another choice of the same prompt: share the leader's prefill, do not repeat it
        if not self._has_room_for(seq):
            return None  # wait for running sequences to finish; FIFO order is kept
        preferred = [s for s in free if s.seq_id == seq.preferred_slot]
        # A slot the client asked for (llama-server's id_slot) when it is free; never waited for,
        # so one request's wish cannot hold up the queue behind it.
        slot = preferred[0] if preferred else max(
            free, key=lambda s: (common_prefix_length(s.tokens, seq.prompt), -s.last_used))
        self.waiting.popleft()
        self._clock += 1
        slot.last_used = self._clock
        slot.sequence = seq
        seq.slot = slot
        seq.status = Status.PREFILLING
        seq.t_admitted = time.perf_counter()
        self.running.append(seq)
        return seq

    def prepare(self, seq: Sequence) -> None:
        """Fill an admitted sequence's slot with the longest reusable prefix it can get."""
        slot = seq.slot
        n_slot = self._reusable(slot.tokens, slot.lora, seq, self._slot_min_position(slot)) if seq.reuse_cache else 0
        source, n_source = self._best_busy_slot(seq) if seq.reuse_cache else (None, 0)
        # Take the entry out of the cache before parking anything: parking
        # saves states into the same cache and could evict it meanwhile.
        entry = self._take_better_entry(seq, max(n_slot, n_source)) if seq.reuse_cache else None
        for other in self.slots:
            if other.sequence is None:
                self._park(other)
        if entry is None and source is not None and n_source > n_slot:
            # Another request holds this prefix right now (the other choices
            # of an n > 1 request, or a shared system prompt): share its cells.
            self._park(slot)
            self.memory.copy(source.seq_id, slot.seq_id, n_source)
            slot.tokens, slot.lora = source.tokens[:n_source], source.lora
        elif entry is not None:
            self._park(slot)
            if self.memory.restore(slot.seq_id, entry.state):
                slot.tokens, slot.lora = entry.tokens, entry.lora
            else:
                self.memory.remove(slot.seq_id, 0)
        elif n_slot < len(slot.tokens) // 2:
            self._save(slot, n_keep=n_slot)  # the new prompt keeps less than half of it: keep a copy in RAM
        self._reuse_prefix(seq, slot)

    def _has_room_for(self, seq: Sequence) -> bool:
        """Whether the KV pool can take this prompt beside what running sequences hold and still need.
        A reused prefix saves compute, not cells: the whole prompt and one more token must fit."""
        held = sum(len(s.tokens) for s in self.slots if s.sequence is not None)
        reserved = sum(s.prompt_remaining + 1 for s in self.running if s.status is Status.PREFILLING)
        needed = len(seq.prompt) + 1
        return self.n_ctx - held - reserved >= needed

    def _reusable(self, tokens: list[int], lora: LoraKey, seq: Sequence, min_position: int) -> int:
        """How many of `tokens` the sequence can keep, given the lowest position their KV state holds
        and the LoRA adapters it was computed with (another adapter's cells are other values).

        At least the last prompt token is decoded again: its logits give the
        first token. On a sliding-window model the token decoded at position
        n attends to positions n - n_swa + 1 .. n (llama.cpp's standard SWA
        mask); if the state no longer holds those, nothing is reused, as in
        llama-server.
        """
        if lora != seq.lora:
            return 0
        n = min(common_prefix_length(tokens, seq.prompt), len(seq.prompt) - 1)
        if n <= 0:
            return 0
        if min_position < 0:  # the window layers hold nothing of it (llama.cpp's pos_min is -1)
            return 0
        if self.n_swa > 0 and min_position > max(0, n - self.n_swa + 1):
            return 0
        return n

    def _best_busy_slot(self, seq: Sequence) -> tuple[Slot | None, int]:
        """The slot of another running request with the longest prefix `seq` can share, and its length."""
        best, best_n = None, 0
        for other in self.slots:
            if other.sequence is not None and other is not seq.slot and other.tokens:
                n = self._reusable(other.tokens, other.lora, seq, self._slot_min_position(other))
                if n > best_n:
                    best, best_n = other, n
        return best, best_n

    def _slot_min_position(self, slot: Slot) -> int:
        return self.memory.min_position(slot.seq_id) if slot.tokens else 0

    def _take_better_entry(self, seq: Sequence, n_slot: int) -> CachedPrompt | None:
        best, best_n = None, n_slot
        for entry in self.cache.entries:
            n = self._reusable(entry.tokens, entry.lora, seq, entry.min_position)
            if n > best_n:
                best, best_n = entry, n
        if best is not None:
            self.cache.take(best)
        return best

    def _reuse_prefix(self, seq: Sequence, slot: Slot) -> None:
        n_reuse = self._reusable(slot.tokens, slot.lora, seq, self._slot_min_position(slot)) if seq.reuse_cache else 0
        if n_reuse < len(slot.tokens):
            if not self.memory.remove(slot.seq_id, n_reuse):
                self.memory.remove(slot.seq_id, 0)
                n_reuse = 0
            del slot.tokens[n_reuse:]
        slot.n_prompt = len(seq.prompt)
        slot.lora = seq.lora
        seq.n_cached = seq.n_fed = n_reuse

    # -- the host prompt cache

    def _save(self, slot: Slot, n_keep: int = 0) -> None:
        """Copy a slot's KV state to the host prompt cache.

        llama.cpp saves only the cells a sliding-window layer still attends to
        from the sequence's last position, so a long state comes back usable
        for its own continuation but not for its prompt sent again (a
        regenerated reply). For that, a second state is saved with the cells
        cut back to the end of the last prompt. The slot then holds only that
        prompt, which callers that keep `n_keep` tokens or fewer never notice.
        """
        if not slot.tokens or self.cache.budget_bytes <= 0:
            return
        self._put(slot, slot.tokens)
        n_prompt = slot.n_prompt
        wanted = self.n_swa > 0 and len(slot.tokens) > self.n_swa and n_keep <= n_prompt < len(slot.tokens)
        if wanted and self.memory.remove(slot.seq_id, n_prompt):
            del slot.tokens[n_prompt:]
            self._put(slot, slot.tokens)

    def _put(self, slot: Slot, tokens: list[int]) -> None:
        state = self.memory.save(slot.seq_id)
        if state is not None:
            min_position = self.memory.min_position(slot.seq_id)
            if self.n_swa > 0 and min_position >= 0:
                # What llama.cpp's state_write keeps of a sliding-window layer.
                min_position = max(min_position, len(tokens) - self.n_swa)
            self.cache.put(list(tokens), state, min_position, slot.lora)

    def park(self, slot: Slot) -> int:
        """Move an idle slot's KV state to the host prompt cache (making room in the pool)."""
        return self._park(slot)

    def touch(self, slot: Slot) -> None:
        """Mark a slot as just used: among free slots that fit a prompt alike, the least recently used goes first."""
        self._clock += 1
        slot.last_used = self._clock

    def _park(self, slot: Slot) -> int:
        """Move an idle slot's KV state to the host prompt cache; returns the cells freed."""
        n = len(slot.tokens)
        if n:
            self._save(slot)
            self.memory.remove(slot.seq_id, 0)
            slot.tokens = []
        return n

    # -- batches

    def plan(self) -> tuple[list[BatchItem], list[Sequence]]:
        """The next batch: one token of every decoding sequence, then prefill
        chunks in admission order, within `n_batch` tokens and the free KV
        cells. Also returns decoding sequences that no longer fit (to end with
        finish reason "length").

        llama.cpp applies LoRA adapters to a whole decode, so a batch holds
        only requests with the same adapters and scales (`Sequence.lora`).
        When running requests differ, the batches take turns among their keys,
        round-robin: with k keys each request advances every k-th step, and
        the batch that could have held them all is k smaller batches."""
        keys = list(dict.fromkeys(seq.lora for seq in self.running))
        if len(keys) <= 1:
            return self._plan(None)
        start = self._turn % len(keys)
        self._turn += 1
        for key in keys[start:] + keys[:start]:
            items, out_of_room = self._plan(key)
            if items or out_of_room:
                return items, out_of_room
        return [], []

    def _plan(self, lora: LoraKey | None) -> tuple[list[BatchItem], list[Sequence]]:
        """`plan` for the running sequences whose LoRA key is `lora` (None: all of them)."""
        items: list[BatchItem] = []
        out_of_room: list[Sequence] = []
        budget = self.n_batch
        free_cells = self.n_ctx - self.cells_used
        running = self.running if lora is None else [seq for seq in self.running if seq.lora == lora]
        decoding = [seq for seq in running if seq.status is Status.DECODING]
        drafted = 0  # draft tokens already in this batch
        for seq in decoding:
            if len(seq.slot.tokens) >= self.n_ctx:
                out_of_room.append(seq)
                continue
            if free_cells < 1:
                free_cells += self._evict_idle(1 - free_cells)
            if free_cells < 1:
                out_of_room.append(seq)
                continue
            draft = self._draft(seq, len(running), len(decoding), drafted,
                                min(budget - len(decoding), free_cells - 1))
            drafted += len(draft)
            items.append(BatchItem(seq, [seq.next_token, *draft], True, len(draft)))
            budget -= 1 + len(draft)
            free_cells -= 1 + len(draft)
        scored_rows = 0  # rows of logits asked for prompts' log-probabilities (max_scored_rows)
        for seq in running:
            if seq.status is not Status.PREFILLING or budget <= 0:
                continue
            n = min(seq.prompt_remaining, budget)
            if seq.n_prompt_logprobs is not None:
                n = min(n, self.max_scored_rows - scored_rows)
            if free_cells < n:
                free_cells += self._evict_idle(n - free_cells)
            n = min(n, free_cells)
            if n <= 0:
                continue  # wait for others to finish and free cells
            chunk = seq.prompt[seq.n_fed : seq.n_fed + n]
            # The last prompt token's logits give the first generated token: none with max_tokens 0.
            items.append(BatchItem(seq, chunk, n == seq.prompt_remaining and seq.max_tokens > 0))
            if seq.n_prompt_logprobs is not None:
                scored_rows += n
            budget -= n
            free_cells -= n
        return items, out_of_room

    def _draft(self, seq: Sequence, n_running: int, n_decoding: int, drafted: int, room: int) -> list[int]:
        """Tokens to verify after `seq`'s next one: what its drafter finds worth the cost in this
        batch, none once more than MAX_DRAFTING_STREAMS sequences run, decoding or prefilling
        (measured: with 8 streams on the demo model drafts cost 17% of the throughput, whatever
        they promised; and a draft beside a prompt being read delays that prompt's first token)."""
        if seq.drafter is None or n_running > MAX_DRAFTING_STREAMS:
            return []
        # Never past max_tokens or the context: a draft token is one more cell and one more token.
        limit = min(room, seq.max_tokens - seq.n_generated - 1, self.n_ctx - len(seq.slot.tokens) - 2)
        return seq.drafter.propose(limit, batch_tokens=n_decoding + drafted)

    def _evict_idle(self, cells_needed: int) -> int:
        """Drop the cached tokens of idle slots, least recently used first."""
        freed = 0
        idle = sorted((s for s in self.slots if s.sequence is None and s.tokens), key=lambda s: s.last_used)
        for slot in idle:
            if freed >= cells_needed:
                break
            freed += self._park(slot)
        return freed

    def forget_all(self) -> None:
        """After a failed decode the KV state is unknown: no slot may trust its tokens."""
        for slot in self.slots:
            slot.tokens = []
        self.cache.clear()
