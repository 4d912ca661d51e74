"""The choices of one request (OpenAI's `n`): their events in arrival order,
each choice's whole reply, and the totals a response reports for all of them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from igllama.engine import Finished, GenerationStream, PromptScores, TextDelta, TokenLogprob


async def interleave(streams: Sequence[GenerationStream]) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
    """(choice index, event) pairs from every stream, as they arrive; each stream ends with its `Finished`."""
    if len(streams) == 1:  # the usual case, without a task per event
        async for event in streams[0]:
            yield 0, event
        return
    pending = {asyncio.ensure_future(anext(stream)): i for i, stream in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                i = pending.pop(future)
                event = future.result()  # an engine error ends the whole request
                yield i, event
                if not isinstance(event, Finished):
                    pending[asyncio.ensure_future(anext(streams[i]))] = i
    finally:
        for future in pending:
            future.cancel()


@dataclass(slots=True)
class Reply:
    """One choice's reply, gathered from its events."""

    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # None: not asked for
    done: Finished | None = None
    tokens: list[int] = field(default_factory=list)  # the ids, when the request asked for them
    prompt: PromptScores | None = None  # the prompt's log-probabilities, when asked (and this choice scored it)

    def add(self, event: TextDelta | Finished) -> None:
        if isinstance(event, TextDelta):
            if event.prompt is not None:
                self.prompt = event.prompt
            self.parts.append(event.text)
            self.thoughts.append(event.reasoning)
            if self.logprobs is not None:
                self.logprobs.extend(event.logprobs)
            if event.tokens:
                self.tokens.extend(event.tokens)
        else:
            self.done = event

    @property
    def finished(self) -> Finished:
        """The final event (a reply gathered to its end has one)."""
        if self.done is None:
            raise RuntimeError("the engine ended a completion without its final event")
        return self.done

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str:
        return "".join(self.thoughts)


@dataclass(slots=True)
class Outcome:
    """What a streamed reply came to, for the access log once it ends."""

    total: Finished | None = None


def combined(given: Sequence[Finished | None]) -> Finished:
    """The totals of all choices, as OpenAI's `usage` counts them: the prompt
    once, the generated tokens of every choice; generation time is the longest."""
    ends = [end for end in given if end is not None]
    if not ends or len(ends) != len(given):
        raise RuntimeError("the engine ended a completion without its final event")
    first = ends[0]
    if len(ends) == 1:
        return first
    return replace(
        first,
        completion_tokens=sum(end.completion_tokens for end in ends),
        generation_ms=max(end.generation_ms for end in ends),
        drafted=sum(end.drafted for end in ends),
        accepted=sum(end.accepted for end in ends),
        tool_calls=(),
    )
