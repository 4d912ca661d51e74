"""The engine: one thread that owns the llama_context, and its asyncio bridge.

Each step, as in nano-vllm: the scheduler picks the work, one `llama_decode`
runs one batch (the next token of every generating sequence plus prefill
chunks of newly admitted ones), then every sequence with logits samples its
token. The asyncio side talks to the thread through a thread-safe queue in and
`loop.call_soon_threadsafe` out, one wake-up per step.

All llama.cpp compute (chat and embeddings) stays on this one thread. The
OpenMP build keeps a team of worker threads per thread that calls into it;
with a second team alive on the same cores every barrier sleeps instead of
spinning, and decoding ran ~60% slower when that happened in a benchmark.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from igllama.engine.embeddings import Embedder, EmbeddingJob, EmbeddingResult
from igllama.engine.model import Model, ModelConfig, ModelLoadError
from igllama.engine.prompt_cache import PromptCache
from igllama.engine.runner import ContextConfig, DecodeError, Runner, default_threads
from igllama.engine.sampling import Sampler
from igllama.engine.scheduler import Scheduler
from igllama.engine.sequence import CompletionRequest, Finished, Sequence, Status, TextDelta
from igllama.engine.template import TemplateError, load_template
from igllama.engine.text import TextPipeline

log = logging.getLogger("igllama.engine")

# Prompts longer than this are rendered and tokenized off the event loop.
_INLINE_PROMPT_CHARS = 32_768


class PromptTooLongError(ValueError):
    """The prompt does not fit in the context."""

    def __init__(self, n_prompt: int, n_ctx: int) -> None:
        super().__init__(
            f"the prompt has {n_prompt} tokens but the context holds {n_ctx}; "
            "shorten the conversation or start the server with a larger --ctx-size"
        )
        self.n_prompt = n_prompt
        self.n_ctx = n_ctx


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: ModelConfig
    n_ctx: int = 4096
    n_batch: int = 512
    n_slots: int = 4
    n_threads: int = 0  # 0: all cores (generation, memory-bandwidth bound)
    n_threads_batch: int = 0  # 0: all cores (prefill, compute bound)
    chat_template: str | None = None  # a built-in name or a Jinja file
    no_think: bool = False
    cache_ram_mib: int = 512  # host RAM for idle slots' KV states; 0 drops them instead


class Engine:
    """Loads the model, then serves `generate` and `embed` from many coroutines at once."""

    def __init__(self, config: EngineConfig, progress: Callable[[float], None] | None = None) -> None:
        self.config = config
        n_batch = min(config.n_batch, config.n_ctx)
        if config.n_slots > n_batch:
            # Each step decodes one token of every slot in one batch (and llama.cpp aborts on such a context).
            raise ModelLoadError(f"{config.n_slots} slots cannot exceed the batch size ({n_batch})")
        self.model = Model(config.model, progress)
        try:
            self.template = load_template(self.model, config.chat_template)
            self.runner = Runner(
                self.model,
                ContextConfig(
                    n_ctx=config.n_ctx,
                    n_batch=config.n_batch,
                    n_seq_max=config.n_slots,
                    n_threads=config.n_threads,
                    n_threads_batch=config.n_threads_batch,
                ),
            )
        except Exception:
            self.model.close()
            raise
        # --no-think "has no effect on models that don't produce thinking
        # blocks": only a template or vocabulary that knows <think> gets one.
        self.thinks = self.template.mentions_thinking or self.model.has_special_token("<think>")
        self.n_threads = config.n_threads or default_threads()
        self.n_threads_batch = config.n_threads_batch or default_threads()
        self.n_ctx = self.runner.n_ctx
        self.scheduler = Scheduler(
            config.n_slots, self.n_ctx, self.runner.n_batch, self.model.n_swa, self.runner,
            PromptCache(config.cache_ram_mib * 1024 * 1024),
        )
        self.embedder = Embedder(self.model, max(self.runner.n_batch, 512), self.n_threads, self.n_threads_batch)
        self.steps = 0  # decodes run so far; read by tests and stats
        self._ids = itertools.count()
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._outbox: list[tuple[Callable[[Any], None], Any]] = []
        self._embed_jobs: list[EmbeddingJob] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="igllama-engine", daemon=True)
        self._thread.start()

    # -- the asyncio side

    async def submit(self, request: CompletionRequest) -> GenerationStream:
        """Start a completion. Bad input (a prompt too long, a template that
        refuses the conversation) raises here, before any work is queued."""
        loop = self._bind_loop()
        if sum(len(m.content) for m in request.messages) > _INLINE_PROMPT_CHARS:
            prompt = await loop.run_in_executor(None, self.prompt_tokens, request)
        else:
            prompt = self.prompt_tokens(request)
        stream = GenerationStream(self._inbox)
        seq = Sequence(
            next(self._ids),
            prompt,
            request.max_tokens,
            Sampler(request.sampling, self.model.n_vocab, prompt),
            TextPipeline(request.stop, strip_think=self.no_think(request)),
            stream.events.put_nowait,
            request.cache_prompt,
        )
        stream.sequence = seq
        self._inbox.put(("submit", seq))
        return stream

    async def generate(self, request: CompletionRequest) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then one `Finished`; closing the iterator early cancels the request."""
        stream = await self.submit(request)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    def prompt_tokens(self, request: CompletionRequest) -> list[int]:
        """The tokenized prompt for `request`; refuses one that cannot fit."""
        text = self.template.render(request.messages, no_think=self.no_think(request))
        tokens = self.model.tokenize_prompt(text)
        if not tokens:
            raise TemplateError("the chat template rendered an empty prompt")
        if len(tokens) >= self.n_ctx:
            raise PromptTooLongError(len(tokens), self.n_ctx)
        return tokens

    def no_think(self, request: CompletionRequest) -> bool:
        """Whether this request's reply opens with an empty think block."""
        wanted = self.config.no_think if request.no_think is None else request.no_think
        return wanted and self.thinks

    async def embed(self, inputs: list[str | list[int]]) -> EmbeddingResult:
        """Unit-length embeddings of each input, computed between chat steps."""
        loop = self._bind_loop()
        tokens = self.embedder.tokenize(inputs)
        done: asyncio.Future[Any] = loop.create_future()

        def settle(outcome: Any) -> None:
            if not done.done():  # a cancelled waiter leaves a cancelled future behind
                done.set_result(outcome)

        job = EmbeddingJob(tokens, settle)
        self._inbox.put(("embed", job))
        try:
            outcome = await done
        except asyncio.CancelledError:
            self._inbox.put(("cancel_embed", job))
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        """Stop the engine thread (pending requests are dropped) and free llama.cpp's memory."""
        if self._thread.is_alive():
            self._inbox.put(("stop", None))
            self._thread.join()
        self.embedder.close()
        self.runner.close()
        self.model.close()

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("an Engine serves one event loop at a time")
            self._loop = loop
        return loop

    # -- the engine thread

    def _run(self) -> None:
        while True:
            idle = not (self.scheduler.has_work or self._embed_jobs)
            if not self._take_commands(block=idle):
                break
            try:
                if self.scheduler.has_work:
                    self._step()
                if self._embed_jobs:
                    self._flush()
                    self._embed_step()
            except Exception as exc:  # never let the engine thread die: fail the work instead
                log.exception("engine step failed")
                self._fail_everything(exc)
            if not self.scheduler.running:
                self._flush()  # otherwise the next step flushes just before its decode

    def _take_commands(self, block: bool) -> bool:
        """Apply queued commands; returns False when asked to stop."""
        try:
            command, payload = self._inbox.get(block=block)
        except queue.Empty:
            return True
        while True:
            if command == "stop":
                return False
            if command == "submit":
                self.scheduler.add(payload)
            elif command == "cancel":
                if payload.status is not Status.FINISHED:
                    self._end(payload)
            elif command == "embed":
                self._embed_jobs.append(payload)
            elif command == "cancel_embed" and payload in self._embed_jobs:
                self._embed_jobs.remove(payload)
            try:
                command, payload = self._inbox.get_nowait()
            except queue.Empty:
                return True

    def _step(self) -> None:
        scheduler, runner = self.scheduler, self.runner
        scheduler.admit()
        items, out_of_room = scheduler.plan()
        for seq in out_of_room:
            self._finish(seq, "length")
        if not items:
            if scheduler.running and not out_of_room:
                # Nothing can move (admission should prevent it): fail the newest
                # request rather than spin with every client waiting behind it.
                seq = scheduler.running[-1]
                self._outbox.append((seq.sink, RuntimeError("no room left in the KV cache for this request")))
                self._end(seq)
            self._flush()
            return
        runner.clear_batch()
        outputs: list[tuple[Sequence, int]] = []
        for item in items:
            seq, slot = item.sequence, item.sequence.slot
            index = runner.add_tokens(slot.seq_id, len(slot.tokens), item.tokens, item.wants_logits)
            if item.wants_logits:
                outputs.append((seq, index))
        # Hand the last step's events to the event loop now, not before this
        # step's Python work: the loop thread then does its share while the
        # decode runs without the GIL, instead of contending for it here.
        self._flush()
        try:
            runner.decode()
        except DecodeError as exc:
            self._recover(items, exc)
            return
        self.steps += 1
        for item in items:
            item.sequence.slot.tokens.extend(item.tokens)
            if item.sequence.status is Status.PREFILLING:
                item.sequence.n_fed += len(item.tokens)
        now = time.perf_counter()
        for seq, index in outputs:
            token = seq.sampler.sample(runner.ctx, index)
            if seq.status is Status.PREFILLING:
                seq.status = Status.DECODING
                seq.t_first_token = now
            self._accept(seq, token)

    def _accept(self, seq: Sequence, token: int) -> None:
        model = self.model
        if model.is_eog(token):
            self._finish(seq, "stop")
            return
        seq.n_generated += 1
        text = seq.text.feed(model.piece(token))
        if text:
            self._outbox.append((seq.sink, TextDelta(text)))
        if seq.text.stopped:
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, finish_reason: str) -> None:
        tail = seq.text.flush()
        if tail:
            self._outbox.append((seq.sink, TextDelta(tail)))
        self._outbox.append((seq.sink, seq.finished_event(finish_reason, time.perf_counter())))
        self._end(seq)

    def _end(self, seq: Sequence) -> None:
        self.scheduler.release(seq)
        seq.sampler.close()

    def _recover(self, items: list[Any], exc: DecodeError) -> None:
        """A failed decode left the KV cache as before (code 1) or unknown (others)."""
        log.warning("%s with %d sequences in the batch", exc, len(items))
        failed = [item.sequence for item in items]
        if exc.code != 1:
            # Every sequence's cells may be gone, not just those of this batch.
            failed = list(self.scheduler.running)
            self.runner.clear_memory()
            self.scheduler.forget_all()
        for seq in failed:
            self._outbox.append((seq.sink, RuntimeError(f"generation failed: {exc}")))
            self._end(seq)

    def _embed_step(self) -> None:
        job = self._embed_jobs[0]
        try:
            self.embedder.step(job)
        except Exception as exc:
            log.exception("embedding failed")
            self._embed_jobs.pop(0)
            self._outbox.append((job.sink, RuntimeError(f"embedding failed: {exc}")))
            return
        if job.done:
            self._embed_jobs.pop(0)
            self._outbox.append((job.sink, job.result()))

    def _fail_everything(self, exc: Exception) -> None:
        error = RuntimeError(f"engine failure: {exc}")
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting):
            self._outbox.append((seq.sink, error))
            self._end(seq)
        for job in self._embed_jobs:
            self._outbox.append((job.sink, error))
        self._embed_jobs.clear()
        self.runner.clear_memory()
        self.scheduler.forget_all()

    def _flush(self) -> None:
        if not self._outbox or self._loop is None:
            return
        batch, self._outbox = self._outbox, []
        try:
            self._loop.call_soon_threadsafe(_deliver, batch)
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass


class GenerationStream:
    """The events of one completion: `TextDelta`s, then one `Finished`.

    An engine failure is raised from `__anext__`. `aclose()` (or dropping the
    stream) before the end cancels the request: its slot is freed at the
    engine's next step.
    """

    def __init__(self, inbox: queue.SimpleQueue[tuple[str, Any]]) -> None:
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.sequence: Sequence | None = None
        self._inbox = inbox
        self._ended = False

    def __aiter__(self) -> GenerationStream:
        return self

    async def __anext__(self) -> TextDelta | Finished:
        if self._ended:
            raise StopAsyncIteration
        event = await self.events.get()
        if isinstance(event, BaseException):
            self._ended = True
            raise event
        if isinstance(event, Finished):
            self._ended = True
        return event

    async def aclose(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if not self._ended and self.sequence is not None:
            self._ended = True
            self._inbox.put(("cancel", self.sequence))

    def __del__(self) -> None:
        self._cancel()


def _deliver(batch: list[tuple[Callable[[Any], None], Any]]) -> None:
    for sink, event in batch:
        sink(event)
