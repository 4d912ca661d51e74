"""The engine: loads a model, joins the engine thread, and serves asyncio callers.

`Engine` is what the rest of the program holds, one per loaded model.
Requests are prepared (rendered, tokenized, their grammars compiled: see
preparation.py) on an executor thread, never on the event loop, then handed to
the model's `worker.Worker` on the engine thread, which owns the llama_context;
events come back on the event loop, one wake-up per step, into each
request's `GenerationStream`.

All llama.cpp compute (chat and embeddings, of every model) stays on one
engine thread (`thread.EngineThread`): an engine started alone gets its own,
the engines of a `pool.EnginePool` share the pool's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Any, TypeVar

from igllama.engine.embeddings import Embedder, EmbeddingJob, EmbeddingResult
from igllama.engine.errors import CapacityError, EngineError, EngineUnavailable, InputError
from igllama.engine.infill import ExtraFile
from igllama.engine.lora import Adapters, LoraSpec
from igllama.engine.messages import ChatMessage
from igllama.engine.model import Model, ModelConfig, ModelLoadError
from igllama.engine.ngram_memory import NgramMemory
from igllama.engine.preparation import INLINE_CHARS, INLINE_MESSAGES, Preparer, is_small
from igllama.engine.prompt import Prompts
from igllama.engine.prompt_cache import PromptCache
from igllama.engine.prompt_logprobs import max_scored_rows
from igllama.engine.runner import ContextConfig, Runner, default_threads
from igllama.engine.sampling import SamplingParams
from igllama.engine.scheduler import Scheduler
from igllama.engine.sequence import CompletionRequest, Finished, TextDelta
from igllama.engine.slot_files import SlotJob, SlotOutcome
from igllama.engine.speculation import DecodeCosts, SpecConfig
from igllama.engine.stats import EngineStats, snapshot
from igllama.engine.stream import ChatStream, GenerationStream, Watchdog
from igllama.engine.template import load_template
from igllama.engine.thread import EngineThread
from igllama.engine.worker import Worker

T = TypeVar("T")


class ChoicesError(InputError):
    """More choices (`n`) than the server could ever run and queue at once."""

    param = "n"


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: ModelConfig
    n_ctx: int = 4096
    n_batch: int = 512
    n_slots: int = 4
    n_threads: int = 0  # 0: all cores (generation, memory-bandwidth bound)
    n_threads_batch: int = 0  # 0: all cores (prefill, compute bound)
    cache_type_k: str = "f16"  # KV cache element types: f16, q8_0, q4_0, ... (runner.KV_CACHE_TYPES)
    cache_type_v: str = "f16"
    chat_template: str | None = None  # a built-in name or a Jinja file
    no_think: bool = False
    cache_ram_mib: int = 512  # host RAM for idle slots' KV states; 0 drops them instead
    max_queue: int = 256  # completions waiting for a slot beyond which new ones are refused
    split_reasoning: bool = True  # a thinking model's <think> block goes to reasoning, not the answer
    # Parse control-token text inside clients' messages as control tokens (llama-server's way); by
    # default only the chat template makes control tokens (control_text.py).
    special_in_content: bool = False
    spec: SpecConfig = field(default_factory=SpecConfig)  # n-gram speculation
    n_ubatch: int = 0  # tokens per physical decode; 0: n_batch
    flash_attn: str = "auto"  # on, off or auto
    pooling: str | None = None  # embeddings' pooling (mean, cls, last); None: the model's, else mean
    # An admitted request that produces nothing for this long, or an engine
    # thread that has not come round its loop for this long while it has
    # work, is a failure reported to the clients instead of a hang.
    watchdog_seconds: float = 300.0
    lora: tuple[LoraSpec, ...] = ()  # LoRA adapters (llama-server's --lora, --lora-scaled)
    lora_apply: bool = True  # False: loaded at scale 0 (--lora-init-without-apply)


class Engine:
    """Loads the model, then serves `generate` and `embed` from many coroutines at once.

    `thread`: the engine thread to run on, shared with other engines; by default
    the engine starts its own and stops it on `close`."""

    def __init__(self, config: EngineConfig, progress: Callable[[float], None] | None = None,
                 thread: EngineThread | None = None) -> None:
        self.config = config
        n_batch = min(config.n_batch, config.n_ctx)
        if config.n_slots > n_batch:
            # Each step decodes one token of every slot in one batch (and llama.cpp aborts on such a context).
            raise ModelLoadError(f"{config.n_slots} slots cannot exceed the batch size ({n_batch})")
        self.model = Model(config.model, progress)
        try:
            self.template = load_template(self.model, config.chat_template)
            self.adapters = Adapters(self.model, config.lora, config.lora_apply)
            self.runner = Runner(
                self.model,
                ContextConfig(
                    n_ctx=config.n_ctx,
                    n_batch=config.n_batch,
                    n_seq_max=config.n_slots,
                    n_threads=config.n_threads,
                    n_threads_batch=config.n_threads_batch,
                    cache_type_k=config.cache_type_k,
                    cache_type_v=config.cache_type_v,
                    n_ubatch=config.n_ubatch,
                    flash_attn=config.flash_attn,
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
        self.prompts = Prompts(self.model, self.template, self.n_ctx, config.special_in_content)
        self.model.control_text  # noqa: B018 - scan the vocabulary now, while loading, not in a request
        self.scheduler = Scheduler(
            config.n_slots, self.n_ctx, self.runner.n_batch, self.model.n_swa, self.runner,
            PromptCache(config.cache_ram_mib * 1024 * 1024),
        )
        self.scheduler.max_scored_rows = min(self.runner.n_batch, max_scored_rows(self.model.n_vocab))
        self.embedder = Embedder(self.model, max(self.runner.n_batch, 512), self.n_threads, self.n_threads_batch,
                                 config.pooling, config.flash_attn)
        self._own_thread = thread is None
        self._thread = thread if thread is not None else EngineThread()
        self.worker = Worker(self.model, self.runner, self.scheduler, self.embedder, self._thread.inbox())
        spec = config.spec
        self.costs = DecodeCosts() if spec.enabled else None  # (timed on the engine thread, then learnt)
        memory = NgramMemory(spec.memory, spec.ngram_max // 2, spec.ngram_max) \
            if spec.enabled and spec.memory > 0 else None
        self.preparer = Preparer(self.model, self.prompts, self.adapters, thinks=self.thinks,
                                 no_think=config.no_think, split_reasoning=config.split_reasoning, spec=spec,
                                 costs=self.costs, memory=memory)
        self.worker.costs = self.costs
        self.worker.adapters = self.adapters if len(self.adapters) else None
        self._inbox = self.worker.inbox
        # The engine as of its latest step, published by the engine thread (see `stats`).
        self.stats = snapshot(self.scheduler, 0)  # (the engine thread has not started)
        self.worker.publish = self._published
        # Event-loop side: the open streams, which the watchdog looks over; calls
        # between their start and their stream (or embeddings) being there; when work last ended.
        self._streams: set[GenerationStream] = set()
        self._starting = 0
        self.idle_since = time.monotonic()
        self._watchdog = Watchdog(self._streams, self.health, config.watchdog_seconds)
        self._loop: asyncio.AbstractEventLoop | None = None
        # Loading ends when the thread has timed its decodes (1-4 s on 2 cores): a request sent
        # earlier would wait behind them, and so would a shutdown's abort, under a green /health.
        try:
            self._thread.attach(self.worker)
        except Exception:
            self._stop_own_thread()
            self._free()
            raise

    @property
    def steps(self) -> int:
        """Decodes run so far (tests and stats)."""
        return self.worker.steps

    def _published(self, stats: EngineStats) -> None:
        self.stats = stats

    @property
    def n_in_flight(self) -> int:
        """Completions submitted and not yet ended, running or queued."""
        return len(self._streams)

    @property
    def busy(self) -> bool:
        """Whether any request is using the engine (a pool unloads only an engine that is not)."""
        return bool(self._streams) or self._starting > 0

    def _ended(self, stream: GenerationStream) -> None:
        self._streams.discard(stream)
        self._note_idle()

    def _note_idle(self) -> None:
        if not self.busy:
            self.idle_since = time.monotonic()

    def health(self) -> str | None:
        """What keeps the engine from serving (its thread stopped or stalled), or None."""
        worker = self.worker
        if worker.failure is not None:
            return worker.failure
        if not self._thread.alive or worker.stopped.is_set():
            return self._thread.failure or "the engine thread stopped"
        busy_since = worker.busy_since
        if busy_since is not None and time.monotonic() - busy_since > self.config.watchdog_seconds:
            return f"the engine has made no progress for {time.monotonic() - busy_since:.0f} s"
        return None

    # -- the asyncio side

    async def submit(self, request: CompletionRequest) -> GenerationStream:
        """Start a completion. Raises before any work is queued: `InputError`
        for a prompt too long or a template that refuses the conversation,
        `CapacityError` when the queue is full, `EngineUnavailable` when the
        engine is not serving."""
        (stream,) = await self.submit_choices(request, 1)
        return stream

    async def submit_choices(self, request: CompletionRequest, n: int) -> list[GenerationStream]:
        """Start `n` completions of one prompt (OpenAI's `n`), raising as `submit` does.

        The prompt is prefilled once: the other choices wait for the first
        one's prefill and share its KV cells. Each choice samples on its own;
        with a `seed`, choice i uses seed + i so that they differ reproducibly.
        """
        self._starting += 1  # (before any await: a pool must not unload the engine meanwhile)
        try:
            return await self._start_choices(request, n)
        finally:
            self._starting -= 1
            self._note_idle()

    async def _start_choices(self, request: CompletionRequest, n: int) -> list[GenerationStream]:
        loop = self._bind_loop()
        self._check_serving()
        self._check_room(n)
        # Everything whose cost grows with the request (rendering, tokenizing, converting
        # schemas, compiling grammars) runs off the event loop, so that one large request
        # is never felt by another client's /health; only a small plain request, a few ms
        # of work, is prepared at once (it then joins the very next step, as requests sent
        # together are admitted together).
        if is_small(request, n):
            sequences = self.preparer.sequences(request, n)
        else:
            sequences = await loop.run_in_executor(None, self.preparer.sequences, request, n)
        try:
            self._check_serving()
            self._check_room(n)  # (others may have taken the room meanwhile)
        except EngineError:
            for seq in sequences:
                seq.sampler.close()
            raise
        streams = []
        for seq in sequences:
            stream = GenerationStream(self._inbox, self._ended)
            stream.sequence, seq.sink = seq, stream.deliver
            self._streams.add(stream)
            streams.append(stream)
            self._inbox.put(("submit", seq))
        return streams

    def _check_room(self, n: int) -> None:
        if n > self.config.n_slots + self.config.max_queue:
            raise ChoicesError(
                f"n is {n}, but this server runs {self.config.n_slots} requests at a time and queues "
                f"{self.config.max_queue} more: ask for at most {self.config.n_slots + self.config.max_queue}"
            )
        if len(self._streams) + n > self.config.n_slots + self.config.max_queue:
            raise CapacityError(
                f"the server is busy: {self.config.max_queue} requests are already waiting; retry later"
            )

    async def generate(self, request: CompletionRequest) -> AsyncIterator[TextDelta | Finished]:
        """Text deltas, then one `Finished`; closing the iterator early cancels the request."""
        stream = await self.submit(request)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    def chat(
        self, messages: Iterable[ChatMessage | Mapping[str, str]], *, max_tokens: int = 512,
        stop: Seq[str] = (), cache_prompt: bool = True, **sampling: Any,
    ) -> ChatStream:
        """A chat reply, for use without HTTP: `messages` as `ChatMessage`s or OpenAI-style
        dicts (`role`, `content`), `sampling` as `SamplingParams` fields (temperature, seed, ...);
        `cache_prompt=False` reads the whole prompt afresh (a bit-exact repeat of a cold run)."""
        turns = tuple(m if isinstance(m, ChatMessage) else ChatMessage(m["role"], m["content"]) for m in messages)
        return ChatStream(self.generate(CompletionRequest(turns, max_tokens, SamplingParams(**sampling), tuple(stop),
                                                          cache_prompt=cache_prompt)))

    def prompt_tokens(self, request: CompletionRequest) -> list[int]:
        """The tokenized prompt for `request`; refuses one that cannot fit (off the loop: `offload`)."""
        return self.preparer.prompt_tokens(request)

    def render(self, request: CompletionRequest) -> str:
        """The prompt text the chat template makes of the request's messages (off the loop: `offload`)."""
        return self.preparer.render(request)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True, param: str = "prompt"
                 ) -> list[int]:
        """Token ids of `text` (BOS first where the model wants one, with `add_special`); refuses
        more text than the context could hold (off the loop: `offload`)."""
        return self.prompts.tokenize(text, add_special, parse_special, param)

    def infill_prompt(self, prefix: str, suffix: str, extra: list[ExtraFile] | tuple[ExtraFile, ...] = ()) -> list[int]:
        """Token ids asking for the code between `prefix` and `suffix` (`NoFimError` without FIM
        tokens; off the loop: `offload`)."""
        return self.prompts.infill(prefix, suffix, extra)

    async def offload(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on an executor thread: for whatever grows with a request's size."""
        return await asyncio.get_running_loop().run_in_executor(None, work, *args)

    async def embed(self, inputs: list[str | list[int]]) -> EmbeddingResult:
        """Unit-length embeddings of each input, computed between chat steps."""

        async def job(settle: Callable[[Any], None]) -> EmbeddingJob:
            if len(inputs) <= INLINE_MESSAGES and sum(len(item) for item in inputs) <= INLINE_CHARS:
                tokens = self.embedder.tokenize(inputs)  # (a few ms at most, as for a small chat request)
            else:
                tokens = await self.offload(self.embedder.tokenize, inputs)
            return EmbeddingJob(tokens, settle)

        return await self._between_steps("embed", job, cancel="cancel_embed")

    async def slot_file(self, action: str, slot_id: int, path: str = "") -> SlotOutcome:
        """Save a slot's KV cache to `path`, restore it from there, or erase it (`action`), on the
        engine thread between steps. Raises `SlotBusy` for a slot serving a request, `SlotFileError`
        for an unknown slot or a file that cannot be written or read back."""

        async def job(settle: Callable[[Any], None]) -> SlotJob:
            # A restored state is taken to be computed with the adapters a request without
            # `lora` uses now: the file does not record them (nor does llama-server's).
            return SlotJob(action, slot_id, path, self.adapters.default_key, settle)

        return await self._between_steps("slot", job)

    async def _between_steps(self, kind: str, make_job: Callable[[Callable[[Any], None]], Awaitable[Any]],
                             cancel: str | None = None) -> Any:
        """Run the job `make_job(settle)` makes on the engine thread between two steps and return what
        it settles with, raising it if it is an exception. Cancelled, the job is withdrawn by a
        `cancel` message, or else still runs and its outcome goes nowhere. The engine counts as
        busy meanwhile (a job has no stream): a pool must not unload it."""
        self._starting += 1
        try:
            loop = self._bind_loop()
            self._check_serving()
            done: asyncio.Future[Any] = loop.create_future()

            def settle(outcome: Any) -> None:
                if not done.done():  # a cancelled waiter leaves a cancelled future behind
                    done.set_result(outcome)

            job = await make_job(settle)
            self._inbox.put((kind, job))
            try:
                outcome = await done
            except asyncio.CancelledError:
                if cancel is not None:
                    self._inbox.put((cancel, job))
                raise
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self._starting -= 1
            self._note_idle()

    def abort(self, error: Exception) -> None:
        """End every request in flight with `error` (the end of a shutdown's drain)."""
        self._inbox.put(("abort", error))

    def close(self, reason: EngineError | None = None) -> None:
        """Leave the engine thread (requests still in flight fail with `reason`, by default
        that the server stopped), stop it if it is the engine's own, and free llama.cpp's memory."""
        self._watchdog.stop()
        if self._thread.alive and not self.worker.stopped.is_set():
            self._inbox.put(("stop", reason))
            self._thread.wait_detached(self.worker)
        self._stop_own_thread()
        self._free()

    def _stop_own_thread(self) -> None:
        if self._own_thread:
            self._thread.stop()

    def _free(self) -> None:
        self.embedder.close()
        self.runner.close()
        self.model.close()

    def _check_serving(self) -> None:
        problem = self.health()
        if problem is not None:
            raise EngineUnavailable(problem)

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise RuntimeError("an Engine serves one event loop at a time")
            self._loop = loop
            self.worker.loop = loop
            self._watchdog.stop()
            self._watchdog.start()
        return loop
