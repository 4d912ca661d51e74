"""A request made ready for the engine thread: its prompt's tokens, and for each
choice a sequence with its own sampler, grammar, text pipeline and drafter.

This is the work whose cost grows with a request (rendering the template,
tokenizing, converting a JSON Schema, compiling a grammar), so the engine
runs it on an executor thread, except for a small plain request (`is_small`),
a few milliseconds, which it prepares at once on the event loop.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

from igllama.engine.errors import InputError
from igllama.engine.grammar import auto_call_grammar, forced_call_grammar, json_grammar
from igllama.engine.lora import Adapters
from igllama.engine.model import Model
from igllama.engine.ngram_memory import NgramMemory
from igllama.engine.prompt import Prompts
from igllama.engine.sampling import Sampler, SamplingParams
from igllama.engine.sequence import CompletionRequest, OutputSchema, Sequence
from igllama.engine.speculation import DecodeCosts, Drafter, SpecConfig
from igllama.engine.text import THINK_OPEN, ReasoningSplitter, TextPipeline
from igllama.engine.tool_calls import OPEN

# A request prepared on the event loop itself: ~3 ms of rendering and tokenizing at most
# (0.75 us a character for the demo model), no grammar to convert or compile.
INLINE_CHARS = 4096
INLINE_MESSAGES = 32
_INLINE_CHOICES = 4


class VocabularyError(InputError):
    """A token id the model's vocabulary does not have."""

    param = "logit_bias"


def is_small(request: CompletionRequest, n: int) -> bool:
    """Whether preparing `n` choices of `request` is cheap enough for the event loop."""
    if n > _INLINE_CHOICES or request.grammar or request.offered_tools:
        return False
    if request.prompt:
        return len(request.prompt) <= INLINE_CHARS
    if len(request.messages) > INLINE_MESSAGES:
        return False
    chars = 0
    for message in request.messages:
        chars += len(message.content) + sum(len(c.arguments) for c in message.tool_calls)
    return chars <= INLINE_CHARS


class Preparer:
    """Makes a request's sequences, for one model with its template, adapters and speculation.

    `thinks`: whether the model writes think blocks; `no_think` and
    `split_reasoning`: the server's defaults, which a request may override."""

    def __init__(self, model: Model, prompts: Prompts, adapters: Adapters, *, thinks: bool, no_think: bool,
                 split_reasoning: bool, spec: SpecConfig, costs: DecodeCosts | None,
                 memory: NgramMemory | None) -> None:
        self.model = model
        self.prompts = prompts
        self.adapters = adapters
        self.thinks = thinks
        self._no_think = no_think
        self._split_reasoning = split_reasoning
        self._spec = spec
        self._costs = costs  # None: speculation is off
        self._memory = memory
        self._ids = itertools.count()

    def sequences(self, request: CompletionRequest, n: int) -> list[Sequence]:
        """The request's `n` sequences, ready for the engine thread."""
        lora = self.adapters.key(request.lora)  # (now: a later change of the global scales does not touch it)
        prompt = self.prompt_tokens(request)
        sampling = self._sampling(request)
        for token, _ in sampling.logit_bias:
            if not 0 <= token < self.model.n_vocab:
                raise VocabularyError(
                    f"logit_bias token id {token} is outside the vocabulary (0..{self.model.n_vocab - 1})")
        sequences: list[Sequence] = []
        scored_request = request.prompt_logprobs is not None
        costs = self._costs if request.speculate else None
        try:
            for i in range(n):
                params = sampling if i == 0 or sampling.seed is None else replace(sampling, seed=sampling.seed + i)
                # Only the first choice scores the prompt (the others' prompt is the same), and it
                # prefills it whole: the cells of a cached prefix carry no logits to score it by.
                scored = i == 0 and scored_request
                sequences.append(Sequence(
                    next(self._ids),
                    prompt,
                    request.max_tokens,
                    Sampler(params, self.model.n_vocab, prompt, self.model.vocab),
                    self._text_pipeline(request, prompt),
                    None,
                    request.cache_prompt and not scored,
                    request.logprobs,
                    # (a scored prompt's other choices wait for its scores too, which open their replies)
                    leader=sequences[0] if sequences and (request.cache_prompt or scored_request) else None,
                    drafter=Drafter(self._spec, costs, prompt, self._memory) if costs else None,
                    report_progress=request.return_progress,
                    return_tokens=request.return_tokens,
                    preferred_slot=request.slot_id,
                    lora=lora,
                    n_prompt_logprobs=request.prompt_logprobs if scored else None,
                    prompt_ranks=request.prompt_ranks,
                    log_end=request.end_logprob,
                ))
        except Exception:
            for seq in sequences:
                seq.sampler.close()
            raise
        return sequences

    def prompt_tokens(self, request: CompletionRequest) -> list[int]:
        """The tokenized prompt for `request`; refuses one that cannot fit."""
        return self.prompts.tokens(request, self.no_think(request))

    def render(self, request: CompletionRequest) -> str:
        """The prompt text the chat template makes of the request's messages."""
        return self.prompts.render(request, self.no_think(request))

    def no_think(self, request: CompletionRequest) -> bool:
        """Whether this request's reply opens with an empty think block (never for raw prompts)."""
        if request.prompt:
            return False
        wanted = self._no_think if request.no_think is None else request.no_think
        return wanted and self.thinks

    def _sampling(self, request: CompletionRequest) -> SamplingParams:
        """The request's sampling, with the grammar its reply follows: a forced
        tool call's, else the request's own (structured output)."""
        tools, choice = request.offered_tools, request.tool_choice
        if tools and choice.forced_opening():
            return replace(request.sampling, grammar=forced_call_grammar(tools, choice))
        if isinstance(request.grammar, OutputSchema):
            return replace(request.sampling, grammar=json_grammar(request.grammar.schema, request.grammar.param))
        if request.grammar:
            return replace(request.sampling, grammar=request.grammar)
        if tools:  # "auto": free text, but a call the model opens must be a valid one
            return replace(request.sampling, grammar=auto_call_grammar(tools), grammar_triggers=(re.escape(OPEN),))
        return request.sampling

    def _text_pipeline(self, request: CompletionRequest, prompt: list[int]) -> TextPipeline:
        return TextPipeline(
            request.stop,
            strip_think=self.no_think(request),
            tools=[tool.name for tool in request.offered_tools],
            opening=request.tool_choice.forced_opening() if request.offered_tools else "",
            reasoning=self._reasoning_splitter(request, prompt),
        )

    def _reasoning_splitter(self, request: CompletionRequest, prompt: list[int]) -> ReasoningSplitter | None:
        """A splitter for a thinking model's reasoning, unless kept inline or thinking is off."""
        split = self._split_reasoning if request.split_reasoning is None else request.split_reasoning
        if not split or not self.thinks or self.no_think(request) or request.prompt:
            return None  # (a raw prompt's continuation is text, as it comes)
        tail = b"".join(self.model.piece(token) for token in prompt[-4:]).decode("utf-8", errors="replace")
        return ReasoningSplitter(opened=tail.rstrip().endswith(THINK_OPEN))
