"""One model's work on the engine thread (`engine.thread`), the only code that touches its llama_context.

Each step, as in nano-vllm: the scheduler picks the work, one `llama_decode`
runs one batch (the next token of every generating sequence plus prefill
chunks of newly admitted ones), then every sequence with logits samples its
token. Commands arrive on a thread-safe queue; events leave in one
`loop.call_soon_threadsafe` per step.

Supervision: every command and every part of a step runs under error
handling that fails only the requests the failure touched, with a typed
error, and the thread keeps serving. Each step ends with an audit that no
request has fallen out of the scheduler's lists. Should the thread stop all
the same, `failure` says why and every request still known gets an error.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from igllama.engine import slot_files
from igllama.engine.embeddings import Embedder, EmbeddingJob
from igllama.engine.errors import CapacityError, EngineError, EngineFailure, EngineUnavailable
from igllama.engine.logprobs import token_logprob
from igllama.engine.lora import Adapters
from igllama.engine.model import Model
from igllama.engine.prompt_logprobs import PromptScores, score_rows
from igllama.engine.runner import DecodeError, Runner
from igllama.engine.scheduler import BatchItem, Scheduler
from igllama.engine.sequence import Sequence, Status, TextDelta
from igllama.engine.speculation import MEASURED_SIZES, DecodeCosts
from igllama.engine.stats import EngineStats, snapshot
from igllama.engine.tool_calls import CallDelta

log = logging.getLogger("igllama.engine")

Sink = Callable[[Any], None]

# The engine's stats are published this often while it works (and whenever it goes idle):
# a snapshot costs ~40 us with 8 busy slots, not worth paying on every step for a scrape.
_STATS_SECONDS = 0.25


class Worker:
    """Runs on the engine thread: takes commands, steps the scheduler, hands out events."""

    def __init__(self, model: Model, runner: Runner, scheduler: Scheduler, embedder: Embedder,
                 inbox: queue.SimpleQueue[tuple[str, Any]] | None = None) -> None:
        self.model = model
        self.runner = runner
        self.scheduler = scheduler
        self.embedder = embedder
        # Commands from the event loop (an `engine.thread.Inbox`, which wakes the thread that runs this).
        self.inbox: queue.SimpleQueue[tuple[str, Any]] = inbox if inbox is not None else queue.SimpleQueue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.steps = 0  # decodes run so far; read by tests and stats
        # Read by the event loop (single attribute reads): why the thread
        # stopped, and when it last came round its loop while it had work.
        self.failure: str | None = None
        self.busy_since: float | None = None
        self._live: set[Sequence] = set()  # submitted and not yet ended
        self._outbox: list[tuple[Sink, Any]] = []
        self._embed_jobs: list[EmbeddingJob] = []
        self.costs: DecodeCosts | None = None  # measured at start when speculation is on
        self.adapters: Adapters | None = None  # LoRA adapters, set before each decode (None: none loaded)
        # Where each flush's stats snapshot goes, on the event loop (None: not wanted).
        self.publish: Callable[[EngineStats], None] | None = None
        self._published = 0.0
        # Set once the start-up work (timing decodes) is done and it takes commands,
        # and once it has left the engine thread (after a "stop" command).
        self.started = threading.Event()
        self.stopped = threading.Event()

    def start(self) -> None:
        """Start-up work on the engine thread, before the first command."""
        try:
            self._measure_costs()
        finally:
            self.started.set()

    def crash(self, failure: str) -> None:
        """The engine thread is stopping on an unexpected error: every request here fails."""
        self.failure = failure
        self._fail_all(EngineUnavailable(failure))
        self._flush()

    def run_stop(self) -> None:
        """The engine thread stops: every request still here fails."""
        self._fail_all(EngineUnavailable("the server stopped"))
        self._flush()

    @property
    def has_work(self) -> bool:
        """Requests or commands to attend to (read on the engine thread)."""
        return self.scheduler.has_work or bool(self._embed_jobs) or not self.inbox.empty()

    def _measure_costs(self) -> None:
        """Time decodes of a few sizes for speculation's sums; without them nothing is drafted."""
        if self.costs is None:
            return
        room = min(self.runner.n_batch, self.scheduler.n_ctx)
        sizes = tuple(n for n in MEASURED_SIZES if n <= room)
        try:
            self.costs.measure(self._timed_decode, sizes)
        except Exception:
            log.warning("timing decodes for speculation failed; it stays off", exc_info=True)

    def _timed_decode(self, n: int) -> None:
        """A decode of n tokens of one sequence, logits at each (for `DecodeCosts`), then undone."""
        runner, seq_id = self.runner, len(self.scheduler.slots) - 1
        runner.clear_batch()
        last = runner.add_tokens(seq_id, 0, [max(self.model.bos_token, 0)] * n, True)
        runner.mark_all_outputs(last - n + 1, last + 1)
        try:
            runner.decode()
        finally:
            runner.remove(seq_id, 0)

    def run_once(self) -> bool:
        """Apply the queued commands, then run one step; False once asked to stop.
        (The engine thread calls it when `has_work`: it never waits.)"""
        if not self._take_commands():
            return False
        self.busy_since = time.monotonic()
        try:
            if self.scheduler.has_work:
                self._step()
            if self._embed_jobs:
                self._flush()
                self._embed_step()
        except Exception as exc:
            # A bug, not a bad request: the running requests' state cannot
            # be trusted, the queued ones never started and stay queued.
            log.exception("engine step failed")
            for seq in list(self.scheduler.running):
                self._fail(seq, EngineFailure(f"the engine failed while generating: {exc}"), discard=True)
        self._audit()
        if not self.scheduler.running:
            self._flush()  # otherwise the next step flushes just before its decode
        if not (self.scheduler.has_work or self._embed_jobs):
            self.busy_since = None
        return True

    # -- commands

    def _take_commands(self) -> bool:
        """Apply queued commands; returns False when asked to stop."""
        while True:
            try:
                command, payload = self.inbox.get_nowait()
            except queue.Empty:
                return True
            if command == "stop":  # payload: the error requests still here end with, or None
                self._fail_all(payload or EngineUnavailable("the server stopped"))
                self._flush()
                return False
            try:
                self._apply(command, payload)
            except Exception as exc:
                log.exception("engine command %r failed", command)
                if isinstance(payload, Sequence):
                    self._fail(payload, EngineFailure(f"the engine failed to {command} this request: {exc}"))

    def _apply(self, command: str, payload: Any) -> None:
        if command == "submit":
            self._live.add(payload)
            self.scheduler.add(payload)
        elif command == "cancel":
            self._end(payload)
        elif command == "embed":
            self._embed_jobs.append(payload)
        elif command == "cancel_embed":
            if payload in self._embed_jobs:
                self._embed_jobs.remove(payload)
        elif command == "abort":
            self._fail_all(payload)
        elif command == "slot":  # a slot's KV cache to or from a file (slot_files.py)
            self._slot_job(payload)
        else:
            raise ValueError(f"unknown engine command {command!r}")

    def _slot_job(self, job: slot_files.SlotJob) -> None:
        try:
            outcome: Any = slot_files.run(job, self.scheduler, self.runner)
        except EngineError as exc:
            outcome = exc
        except Exception as exc:
            log.exception("slot %s failed", job.action)
            outcome = EngineFailure(f"the slot {job.action} failed: {exc}")
        self._outbox.append((job.sink, outcome))
        self._flush()

    # -- a step

    def _step(self) -> None:
        scheduler, runner = self.scheduler, self.runner
        while (seq := scheduler.next_admission()) is not None:
            try:
                scheduler.prepare(seq)
            except Exception as exc:
                log.exception("admitting a request failed")
                self._fail(seq, EngineFailure(f"the engine failed to start this request: {exc}"), discard=True)
        items, out_of_room = scheduler.plan()
        for seq in out_of_room:
            self._finish(seq, "length")
        if not items:
            if scheduler.running and not out_of_room:
                # Nothing can move (admission should prevent it): fail the newest
                # request rather than spin with every client waiting behind it.
                self._fail(scheduler.running[-1], CapacityError("no room left in the KV cache for this request"))
            self._flush()
            return
        runner.clear_batch()
        outputs: list[tuple[BatchItem, int]] = []
        scored: list[tuple[BatchItem, int, int]] = []  # prompt chunks to score: (item, first index, rows)
        for item in items:
            slot = item.sequence.slot
            index = runner.add_tokens(slot.seq_id, len(slot.tokens), item.tokens, item.wants_logits)
            if item.n_draft:
                runner.mark_all_outputs(index - item.n_draft, index + 1)
            if item.wants_logits:
                outputs.append((item, index - item.n_draft))
            seq = item.sequence
            if seq.n_prompt_logprobs is not None and seq.status is Status.PREFILLING:
                # Rows for the positions whose next token is in the prompt: never the last one's.
                first = index - len(item.tokens) + 1
                rows = min(len(item.tokens), len(seq.prompt) - 1 - seq.n_fed)
                runner.mark_all_outputs(first, first + rows)
                scored.append((item, first, rows))
        if self.adapters is not None:
            self.adapters.apply(runner.ctx, items[0].sequence.lora)  # (one key per batch: scheduler.plan)
        # Hand the last step's events to the event loop now, not before this
        # step's Python work: the loop thread then does its share while the
        # decode runs without the GIL, instead of contending for it here.
        self._flush()
        started = time.perf_counter()
        try:
            runner.decode()
        except DecodeError as exc:
            self._recover(items, exc)
            return
        if self.costs is not None and all(item.sequence.status is Status.DECODING for item in items):
            self.costs.observe(sum(len(item.tokens) for item in items), (time.perf_counter() - started) * 1000.0)
        self.steps += 1
        now = time.perf_counter()
        for item, first, rows in scored:
            self._score_prompt(item, first, rows)
        for item in items:
            seq = item.sequence
            if seq.status is Status.FINISHED:
                continue  # (its scoring failed: it was failed, its cells dropped)
            seq.slot.tokens.extend(item.tokens)
            if seq.status is Status.PREFILLING:
                seq.n_fed += len(item.tokens)
                if seq.report_progress:
                    self._outbox.append((seq.sink, TextDelta("", progress=seq.progress(now))))
                if seq.prompt_remaining == 0 and seq.n_prompt_logprobs is not None:
                    self._outbox.append((seq.sink, TextDelta("", prompt=self._prompt_scores(seq))))
                if seq.prompt_remaining == 0 and seq.max_tokens == 0:
                    self._finish(seq, "length")  # (scoring only: the prompt was all it asked for)
        for item, index in outputs:
            seq = item.sequence
            if seq.status is Status.FINISHED:
                continue
            try:
                if item.n_draft:
                    self._verify(item, index)
                    continue
                token = self._sample(seq, index)
                if seq.status is Status.PREFILLING:
                    seq.status = Status.DECODING
                    seq.t_first_token = now
                self._accept(seq, token)
            except Exception as exc:
                log.exception("sampling failed")
                self._fail(seq, EngineFailure(f"sampling failed: {exc}"), discard=True)

    def _score_prompt(self, item: BatchItem, first: int, rows: int) -> None:
        """The log-probabilities of the prompt tokens that follow this chunk's positions."""
        seq = item.sequence
        if rows <= 0 or seq.n_prompt_logprobs is None:
            return
        targets = seq.prompt[seq.n_fed + 1 : seq.n_fed + 1 + rows]
        try:
            seq.prompt_entries += score_rows(self.runner.ctx, first, targets, self.model.n_vocab,
                                             seq.n_prompt_logprobs, seq.prompt_ranks, self.model.token_text)
        except Exception as exc:
            log.exception("scoring a prompt failed")
            self._fail(seq, EngineFailure(f"scoring the prompt failed: {exc}"), discard=True)

    def _prompt_scores(self, seq: Sequence) -> PromptScores:
        first = seq.prompt[0]
        entries, seq.prompt_entries = tuple(seq.prompt_entries), []
        return PromptScores(first, self.model.token_text(first), entries)

    def _sample(self, seq: Sequence, index: int) -> int:
        """The token `seq`'s sampler draws from output `index`, its log-probabilities noted if asked."""
        token = seq.sampler.sample(self.runner.ctx, index)
        if seq.n_logprobs is not None and (seq.log_end or not self.model.is_eog(token)):
            entry = token_logprob(self.runner.ctx, index, self.model.n_vocab, token, seq.n_logprobs, self.model.piece)
            seq.pending_logprobs.append((seq.n_bytes_generated, entry))
            seq.n_bytes_generated += len(entry.piece)
        return token

    def _verify(self, item: BatchItem, first: int) -> None:
        """A drafted item: draw the sequence's own token at each position, keeping drafted
        tokens while they match; the cells of the rejected rest leave the KV cache."""
        seq, slot, draft = item.sequence, item.sequence.slot, item.tokens[1:]
        accepted = 0
        for i in range(item.n_draft + 1):
            token = self._sample(seq, first + i)
            self._accept(seq, token)
            if seq.status is Status.FINISHED or i == item.n_draft or token != draft[i]:
                break
            accepted += 1
        seq.n_drafted += item.n_draft
        seq.n_accepted += accepted
        if seq.drafter is not None:
            seq.drafter.record(item.n_draft, accepted)
        keep = len(slot.tokens) - (item.n_draft - accepted)
        if keep < len(slot.tokens):
            if not self.runner.remove(slot.seq_id, keep):
                raise RuntimeError("llama.cpp could not remove a rejected draft from the KV cache")
            del slot.tokens[keep:]

    def _accept(self, seq: Sequence, token: int) -> None:
        model = self.model
        if model.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        if seq.pending_tokens is not None:
            seq.pending_tokens.append(token)
        if seq.drafter is not None:
            seq.drafter.append(token)
        piece = model.piece(token)
        if not piece and seq.text.reads_calls:
            piece = model.call_markers.get(token, b"")
        text = seq.text.feed(piece)
        reasoning = seq.text.take_reasoning()
        calls = seq.text.take_call_deltas() if seq.text.reads_calls else ()
        if text or reasoning or calls:
            self._outbox.append((seq.sink, self._delta(seq, text, reasoning, calls)))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _recover(self, items: list[BatchItem], exc: DecodeError) -> None:
        """A failed decode left the KV cache as before (code 1) or unknown (others)."""
        log.warning("%s with %d sequences in the batch", exc, len(items))
        if exc.code == 1:
            for item in items:
                self._fail(item.sequence, CapacityError(f"generation failed: {exc}"))
            return
        # Every sequence's cells may be gone, not just those of this batch.
        failed = list(self.scheduler.running)
        self.runner.clear_memory()
        self.scheduler.forget_all()
        for seq in failed:
            self._fail(seq, EngineFailure(f"generation failed: {exc}"))

    def _embed_step(self) -> None:
        job = self._embed_jobs[0]
        try:
            self.embedder.step(job)
        except Exception as exc:
            log.exception("embedding failed")
            self._embed_jobs.pop(0)
            self._outbox.append((job.sink, EngineFailure(f"embedding failed: {exc}")))
            return
        if job.done:
            self._embed_jobs.pop(0)
            self._outbox.append((job.sink, job.result()))

    # -- ending requests: every path goes through _end

    @staticmethod
    def _delta(seq: Sequence, text: str, reasoning: str = "", calls: tuple[CallDelta, ...] = ()) -> TextDelta:
        """`text`, with the log-probabilities of the tokens whose first byte it releases.

        Text is held back (a possible stop string, half a character), so a
        token's entry goes out with the delta that shows its text; the tokens
        of a stop string are never shown, and their entries never sent. Asked
        for, the ids of the tokens generated since the last delta go with it."""
        tokens: tuple[int, ...] = ()
        if seq.pending_tokens:
            tokens = tuple(seq.pending_tokens)
            seq.pending_tokens.clear()
        if seq.n_logprobs is None:
            return TextDelta(text, (), reasoning, calls, tokens=tokens)
        seq.n_bytes_released += len(text.encode()) + len(reasoning.encode())
        pending = seq.pending_logprobs
        n = 0
        while n < len(pending) and pending[n][0] < seq.n_bytes_released:
            n += 1
        if n == 0:
            return TextDelta(text, (), reasoning, calls, tokens=tokens)
        released = tuple(entry for _, entry in pending[:n])
        del pending[:n]
        return TextDelta(text, released, reasoning, calls, tokens=tokens)

    def _finish(self, seq: Sequence, finish_reason: str) -> None:
        tail = seq.text.flush()
        reasoning = seq.text.take_reasoning()
        calls = seq.text.take_call_deltas()
        if tail or reasoning or calls:
            self._outbox.append((seq.sink, self._delta(seq, tail, reasoning, calls)))
        # Tokens that render as nothing at the very end (the rest went out with their text); the
        # ids of a stop string's tokens go too, as llama-server counts them among the generated ones.
        entries = () if seq.text.stopped else tuple(entry for _, entry in seq.pending_logprobs)
        ids = tuple(seq.pending_tokens or ())
        if entries or ids:
            self._outbox.append((seq.sink, TextDelta("", entries, tokens=ids)))
        seq.pending_logprobs.clear()
        self._outbox.append((seq.sink, seq.finished_event(finish_reason, time.perf_counter())))
        self._end(seq)

    def _fail(self, seq: Sequence, error: EngineError, discard: bool = False) -> None:
        """End `seq` with `error`; `discard` drops its slot's KV state, which the failure left unknown."""
        if seq.status is Status.FINISHED and seq not in self._live:
            return  # already ended, and its client told
        slot = seq.slot
        self._outbox.append((seq.sink, error))
        self._end(seq)
        if discard and slot is not None:
            try:
                self.scheduler.discard_slot_state(slot)
            except Exception:
                log.exception("clearing a failed request's KV cells failed")

    def _end(self, seq: Sequence) -> None:
        if seq.drafter is not None and seq in self._live:
            seq.drafter.remember()
        if seq.status is not Status.FINISHED:
            self.scheduler.release(seq)
            seq.sampler.close()
        self._live.discard(seq)

    def _fail_all(self, error: EngineError) -> None:
        for seq in list(self._live):
            self._fail(seq, error)
        for job in self._embed_jobs:
            self._outbox.append((job.sink, error))
        self._embed_jobs.clear()

    def _audit(self) -> None:
        """Fail any request the scheduler lost track of, so that its client hears of it."""
        scheduler = self.scheduler
        if len(self._live) == len(scheduler.waiting) + len(scheduler.running):
            return  # the common case, checked in O(1)
        placed = set(scheduler.waiting) | set(scheduler.running)
        for seq in list(self._live):
            if seq not in placed:
                log.error("request %d was in no queue (status %s); failing it", seq.id, seq.status.name)
                self._fail(seq, EngineFailure("the engine lost track of this request"), discard=True)

    def _flush(self) -> None:
        """Hand the events so far to the event loop, with a snapshot of the engine's stats when one is due."""
        if self.loop is None:
            return
        publish = self.publish
        if publish is not None and (not self.scheduler.has_work
                                    or time.monotonic() - self._published >= _STATS_SECONDS):
            self._outbox.append((publish, snapshot(self.scheduler, self.steps)))
            self._published = time.monotonic()
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        try:
            self.loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass


def _deliver(batch: list[tuple[Sink, Any]]) -> None:
    for sink, event in batch:
        sink(event)
