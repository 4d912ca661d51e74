"""A request as the engine sees it, and the events it produces.

`CompletionRequest` is what the rest of the program submits; `Sequence` is
the engine thread's state for it; `TextDelta` and `Finished` are what comes
back, in that order.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

from igllama.engine.messages import ChatMessage
from igllama.engine.sampling import SamplingParams
from igllama.engine.text import TextPipeline
from igllama.engine.tool_calls import CallDelta, ToolCall
from igllama.engine.tools import ToolChoice, ToolSpec

if TYPE_CHECKING:
    from igllama.engine.logprobs import TokenLogprob
    from igllama.engine.prompt_logprobs import PromptScores
    from igllama.engine.sampling import Sampler
    from igllama.engine.speculation import Drafter


@dataclass(frozen=True, slots=True)
class OutputSchema:
    """Structured output given as a JSON Schema. It becomes a grammar when the request is
    prepared, off the event loop: the conversion's cost grows with the schema."""

    schema: Mapping[str, Any]
    param: str  # the request field it came from, named by errors


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A chat completion to run. `no_think` None means the server's default."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int = 2048
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    no_think: bool | None = None
    # Reuse a slot's cached prefix (llama-server's cache_prompt). The last prompt
    # token is then decoded alone, and llama.cpp's kernels do not promise the
    # same floating-point result for one token as for a whole prompt, so a
    # greedy reply may drift from a cold run where two tokens are nearly tied.
    cache_prompt: bool = True
    # None: no log-probabilities; n: each token's, with the n most likely (0-20).
    logprobs: int | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    grammar: str | OutputSchema = ""  # GBNF or a schema the reply must follow (structured output), "" for none
    # Reasoning (<think>...</think>) apart from the answer; None: the server's default.
    split_reasoning: bool | None = None
    # Token ids to continue, instead of `messages` through the chat template
    # (text completions, fill-in-the-middle): the engine applies no template.
    prompt: tuple[int, ...] = ()
    # Let the engine speculate (n-gram drafts) when it pays; off, the reply is the same, only slower.
    speculate: bool = True
    return_progress: bool = False  # `Progress` events while the prompt is prefilled (llama-server's)
    return_tokens: bool = False  # each delta carries the ids of the tokens it releases (llama-server's `tokens`)
    # The slot to run on when it is free (llama-server's `id_slot`); otherwise, or None, the usual choice.
    slot_id: int | None = None
    # LoRA adapters as (id, scale) pairs (llama-server's `lora` field); None: the server's global scales.
    lora: tuple[tuple[int, float], ...] | None = None
    # The prompt's own log-probabilities, with this many alternatives per position (0-20), None
    # for none: the prompt is then prefilled whole (no cached prefix has its logits), and with
    # `max_tokens` 0 nothing is generated. `prompt_ranks`: each token's rank in the vocabulary too.
    prompt_logprobs: int | None = None
    prompt_ranks: bool = False
    # List the end-of-generation token that ends the reply among the logprobs (as OpenAI's
    # legacy completions did): a harness counting positions after an echo expects it.
    end_logprob: bool = False

    @property
    def offered_tools(self) -> tuple[ToolSpec, ...]:
        return self.tools if self.tool_choice.mode != "none" else ()


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the reply, and (when asked) the log-probabilities of the
    tokens whose text it releases."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    reasoning: str = ""  # new text of the reasoning block, kept apart from the answer
    calls: tuple[CallDelta, ...] = ()  # pieces of tool calls as they stream
    progress: Progress | None = None  # the prompt's prefill so far (asked with `return_progress`)
    tokens: tuple[int, ...] = ()  # ids of the tokens generated since the last delta (asked with `return_tokens`)
    prompt: PromptScores | None = None  # the prompt's log-probabilities, once (asked with `prompt_logprobs`)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a prompt's prefill has come, after one of its chunks."""

    total: int  # prompt tokens
    cached: int  # reused from the prefix cache
    processed: int  # in the KV cache now, cached ones included
    elapsed_ms: float  # since the request got its slot


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a reply: why it ended, token counts and timings."""

    finish_reason: str  # "stop", "length" or "tool_calls"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the prefix cache
    completion_tokens: int
    prefill_ms: float
    generation_ms: float
    tool_calls: tuple[ToolCall, ...] = ()
    stop_string: str = ""  # the stop string that ended the reply, if one did
    drafted: int = 0  # tokens speculation proposed
    accepted: int = 0  # of those, the ones the model's own sampling confirmed
    queued_ms: float = 0.0  # waiting for a slot, before the prefill
    slot: int = -1  # the slot that served the request (llama-server's `id_slot`)

    @property
    def first_token_seconds(self) -> float:
        """From submission to the first token: the queue, then the prefill."""
        return (self.queued_ms + self.prefill_ms) / 1000.0

    @property
    def seconds_per_output_token(self) -> float | None:
        """The mean time between generated tokens, None with fewer than two."""
        n = self.completion_tokens - 1
        return self.generation_ms / 1000.0 / n if n > 0 else None

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n * 1000.0 / self.prefill_ms if self.prefill_ms > 0 else 0.0

    @property
    def generation_tokens_per_s(self) -> float:
        # The first token comes out of the prefill; the rest take one decode each.
        n = self.completion_tokens - 1
        return n * 1000.0 / self.generation_ms if n > 0 and self.generation_ms > 0 else 0.0


class Status(Enum):
    WAITING = auto()  # queued for a free slot
    PREFILLING = auto()  # its prompt is going into the KV cache, chunk by chunk
    DECODING = auto()  # one token a step
    FINISHED = auto()


class Sequence:
    """One request's state on the engine thread."""

    __slots__ = (
        "drafter",
        "id",
        "leader",
        "log_end",
        "lora",
        "max_tokens",
        "n_accepted",
        "n_bytes_generated",
        "n_bytes_released",
        "n_cached",
        "n_drafted",
        "n_fed",
        "n_generated",
        "n_logprobs",
        "n_prompt_logprobs",
        "next_token",
        "pending_logprobs",
        "pending_tokens",
        "preferred_slot",
        "prompt",
        "prompt_entries",
        "prompt_ranks",
        "report_progress",
        "reuse_cache",
        "sampler",
        "sink",
        "slot",
        "status",
        "t_admitted",
        "t_first_token",
        "t_submitted",
        "text",
    )

    def __init__(
        self,
        seq_id: int,
        prompt: list[int],
        max_tokens: int,
        sampler: Sampler,
        text: TextPipeline,
        sink: Any,
        reuse_cache: bool = True,
        n_logprobs: int | None = None,
        leader: Sequence | None = None,
        drafter: Drafter | None = None,
        report_progress: bool = False,
        return_tokens: bool = False,
        preferred_slot: int | None = None,
        lora: tuple[tuple[int, float], ...] = (),
        n_prompt_logprobs: int | None = None,
        prompt_ranks: bool = False,
        log_end: bool = False,
    ) -> None:
        self.id = seq_id
        # Generated token ids not yet sent with a delta; None: not asked for.
        self.pending_tokens: list[int] | None = [] if return_tokens else None
        self.preferred_slot = preferred_slot
        # The LoRA adapters its decodes run with (lora.LoraKey): only equal keys share a batch.
        self.lora = lora
        # The prompt's log-probabilities (None: not asked), gathered chunk by chunk as it is prefilled.
        self.n_prompt_logprobs = n_prompt_logprobs
        self.prompt_ranks = prompt_ranks
        self.prompt_entries: list[TokenLogprob] = []
        self.log_end = log_end  # an end-of-generation token gets its logprobs entry too
        self.report_progress = report_progress  # a `Progress` event after each prefill chunk
        # Another choice of the same request (n > 1): this one waits until the
        # leader's prompt is in the KV cache, then shares its cells.
        self.leader = leader
        self.drafter = drafter  # n-gram speculation (None: off)
        self.n_drafted = self.n_accepted = 0
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.text = text
        self.sink = sink  # where events go; the engine hands them to the event loop
        self.reuse_cache = reuse_cache
        self.n_logprobs = n_logprobs  # None: not asked
        # With logprobs: the entries of tokens whose text is not released yet,
        # each with the offset of its first byte in the generated bytes, and
        # how many bytes were generated and released so far.
        self.pending_logprobs: list[tuple[int, TokenLogprob]] = []
        self.n_bytes_generated = 0
        self.n_bytes_released = 0
        self.status = Status.WAITING
        self.slot: Any = None
        self.n_cached = 0  # prompt tokens found in the slot's KV cache
        self.n_fed = 0  # prompt tokens in the KV cache so far (cached + prefilled)
        self.n_generated = 0
        self.next_token = -1  # the sampled token to decode next
        self.t_submitted = time.perf_counter()
        self.t_admitted = 0.0
        self.t_first_token = 0.0

    @property
    def prompt_remaining(self) -> int:
        return len(self.prompt) - self.n_fed

    def progress(self, now: float) -> Progress:
        return Progress(len(self.prompt), self.n_cached, self.n_fed, (now - self.t_admitted) * 1000.0)

    def finished_event(self, finish_reason: str, now: float) -> Finished:
        first = self.t_first_token or now
        calls = tuple(self.text.tool_calls)
        return Finished(
            finish_reason="tool_calls" if calls else finish_reason,
            tool_calls=calls,
            stop_string=self.text.matched_stop,
            drafted=self.n_drafted,
            accepted=self.n_accepted,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.n_cached,
            completion_tokens=self.n_generated,
            queued_ms=(self.t_admitted - self.t_submitted) * 1000.0 if self.t_admitted else 0.0,
            slot=self.slot.seq_id if self.slot is not None else -1,
            prefill_ms=(first - self.t_admitted) * 1000.0 if self.t_admitted else 0.0,
            generation_ms=(now - first) * 1000.0,
        )
