"""A request as the engine sees it, and the events it produces.

`CompletionRequest` is what the rest of the program submits; `Sequence` is
the engine thread's state for it; `TextDelta` and `Finished` are what comes
back, in that order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TYPE_CHECKING, Any

from igllama.engine.sampling import SamplingParams
from igllama.engine.template import ChatMessage
from igllama.engine.text import TextPipeline

if TYPE_CHECKING:
    from igllama.engine.sampling import Sampler


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
    # greedy reply may drift from a cold run late in the text.
    cache_prompt: bool = True


@dataclass(frozen=True, slots=True)
class TextDelta:
    """New text of the reply."""

    text: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The last event of a reply: why it ended, token counts and timings."""

    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens reused from the prefix cache
    completion_tokens: int
    prefill_ms: float
    generation_ms: float

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
        "id",
        "max_tokens",
        "n_cached",
        "n_fed",
        "n_generated",
        "next_token",
        "prompt",
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
    ) -> None:
        self.id = seq_id
        self.prompt = prompt
        self.max_tokens = max_tokens
        self.sampler = sampler
        self.text = text
        self.sink = sink  # where events go; the engine hands them to the event loop
        self.reuse_cache = reuse_cache
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

    def finished_event(self, finish_reason: str, now: float) -> Finished:
        first = self.t_first_token or now
        return Finished(
            finish_reason=finish_reason,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.n_cached,
            completion_tokens=self.n_generated,
            prefill_ms=(first - self.t_admitted) * 1000.0 if self.t_admitted else 0.0,
            generation_ms=(now - first) * 1000.0,
        )
