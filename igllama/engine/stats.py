"""What the engine thread publishes about itself: a frozen snapshot per step.

The event loop never reads the scheduler's or a sequence's state (they
change under it on the engine thread); the worker builds an `EngineStats`
with a step's events (every 0.25 s while it works, and when it goes idle)
and the loop keeps the latest one, for `/metrics` and `/slots`.
"""

from __future__ import annotations

from dataclasses import dataclass

from igllama.engine.sampling import SamplingParams
from igllama.engine.scheduler import Scheduler
from igllama.engine.sequence import Status


@dataclass(frozen=True, slots=True)
class SlotStats:
    """One slot: the KV sequence it holds and the request it serves, if any."""

    id: int
    n_cached_tokens: int  # tokens whose keys and values the slot's KV sequence holds
    task_id: int | None = None  # the request's id inside the engine; None when idle
    status: str = "idle"  # "idle", "prefilling" or "decoding"
    n_prompt_tokens: int = 0
    n_prompt_processed: int = 0  # prompt tokens in the KV cache so far (reused + prefilled)
    n_prompt_cached: int = 0  # of those, reused from an earlier request
    n_decoded: int = 0
    n_remain: int = 0  # tokens it may still generate (max_tokens - n_decoded)
    sampling: SamplingParams | None = None
    speculative: bool = False
    n_drafted: int = 0
    n_accepted: int = 0

    @property
    def is_processing(self) -> bool:
        return self.task_id is not None


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine as of its latest step."""

    decode_steps: int = 0
    running: int = 0  # requests with a slot (prefilling or decoding)
    queued: int = 0  # requests waiting for a slot
    kv_cells_used: int = 0
    kv_cells_total: int = 0
    prompt_cache_bytes: int = 0  # idle slots' KV states kept in host RAM
    slots: tuple[SlotStats, ...] = ()

    @property
    def busy_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.is_processing)


def snapshot(scheduler: Scheduler, decode_steps: int) -> EngineStats:
    """The scheduler's state now (engine thread only)."""
    slots = []
    for slot in scheduler.slots:
        seq = slot.sequence
        if seq is None:
            slots.append(SlotStats(slot.seq_id, len(slot.tokens)))
            continue
        slots.append(SlotStats(
            slot.seq_id,
            len(slot.tokens),
            task_id=seq.id,
            status="prefilling" if seq.status is Status.PREFILLING else "decoding",
            n_prompt_tokens=len(seq.prompt),
            n_prompt_processed=seq.n_fed,
            n_prompt_cached=seq.n_cached,
            n_decoded=seq.n_generated,
            n_remain=max(seq.max_tokens - seq.n_generated, 0),
            sampling=seq.sampler.params,
            speculative=seq.drafter is not None,
            n_drafted=seq.n_drafted,
            n_accepted=seq.n_accepted,
        ))
    return EngineStats(
        decode_steps=decode_steps,
        running=len(scheduler.running),
        queued=len(scheduler.waiting),
        kv_cells_used=scheduler.cells_used,
        kv_cells_total=scheduler.n_ctx,
        prompt_cache_bytes=scheduler.cache.size,
        slots=tuple(slots),
    )
