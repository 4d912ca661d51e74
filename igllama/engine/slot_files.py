"""A slot's KV cache to and from a file (llama-server's `POST /slots/{id}?action=save|restore|erase`).

A file is written by llama.cpp's `llama_state_seq_save_file`: the slot's
token ids, then its sequence state, in the format llama-server writes, so a
file saved by one server restores in the other (same model, same KV types).
Restored, the slot holds those tokens again, and a request whose prompt
starts with them reuses their cells through the prefix cache, after a
restart too.

The jobs run on the engine thread, which owns the llama_context, between
steps; a slot serving a request is refused rather than waited for. Which
file a name means is the API's business (api/slot_actions.py confines
names to the save directory); this module takes a full path.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama

from igllama.engine.errors import EngineError, InputError
from igllama.engine.lora import LoraKey
from igllama.engine.runner import Runner
from igllama.engine.scheduler import Scheduler, Slot

ACTIONS = ("save", "restore", "erase")


class SlotBusy(EngineError):
    """The slot is serving a request: its cells change under a save, and a restore would overwrite them."""


class SlotFileError(InputError):
    """A slot id the server does not have, or a file that cannot be read or written as a slot's state."""

    param = "filename"


@dataclass(slots=True)
class SlotJob:
    """One action on one slot, and where its outcome goes (a `SlotOutcome` or an `EngineError`)."""

    action: str  # one of ACTIONS
    slot_id: int
    path: str  # the file (save, restore); "" for erase
    lora: LoraKey  # restore: the adapters the restored cells are taken to be computed with
    sink: Callable[[Any], None]


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    n_tokens: int  # saved, restored or erased
    n_bytes: int  # written or read (0 for erase)
    ms: float


def run(job: SlotJob, scheduler: Scheduler, runner: Runner) -> SlotOutcome:
    """Carry out `job` (engine thread). Raises `SlotBusy` or `SlotFileError`."""
    if not 0 <= job.slot_id < len(scheduler.slots):
        raise SlotFileError(f"no slot {job.slot_id}: this server has slots 0..{len(scheduler.slots) - 1}")
    slot = scheduler.slots[job.slot_id]
    if slot.sequence is not None:
        raise SlotBusy(f"slot {job.slot_id} is serving a request; retry once GET /slots shows it idle")
    started = time.perf_counter()
    if job.action == "save":
        n_tokens, n_bytes = _save(slot, runner, job.path)
    elif job.action == "restore":
        n_tokens, n_bytes = _restore(slot, scheduler, runner, job)
    elif job.action == "erase":
        n_tokens, n_bytes = len(slot.tokens), 0
        scheduler.discard_slot_state(slot)
    else:
        raise ValueError(f"unknown slot action {job.action!r}")
    return SlotOutcome(n_tokens, n_bytes, (time.perf_counter() - started) * 1000.0)


def _save(slot: Slot, runner: Runner, path: str) -> tuple[int, int]:
    tokens = (llama.llama_token * max(len(slot.tokens), 1))(*slot.tokens)
    n_bytes = llama.llama_state_seq_save_file(runner.ctx, os.fsencode(path), slot.seq_id, tokens, len(slot.tokens))
    if n_bytes == 0:
        raise SlotFileError(f"could not write the slot's state to {os.path.basename(path)}")
    return len(slot.tokens), int(n_bytes)


def _restore(slot: Slot, scheduler: Scheduler, runner: Runner, job: SlotJob) -> tuple[int, int]:
    name = os.path.basename(job.path)
    if not os.path.isfile(job.path):
        raise SlotFileError(f"no slot file {name!r} in the slot save directory")
    # Make room the way admission does: idle slots' states go to the host prompt cache.
    for other in scheduler.slots:
        if other.sequence is None:
            scheduler.park(other)
    capacity = scheduler.n_ctx
    tokens = (llama.llama_token * capacity)()
    n_tokens = ctypes.c_size_t(0)
    n_bytes = llama.llama_state_seq_load_file(
        runner.ctx, os.fsencode(job.path), slot.seq_id, tokens, capacity, ctypes.byref(n_tokens))
    if n_bytes == 0:
        runner.remove(slot.seq_id, 0)  # (a half-read state must not stay behind)
        raise SlotFileError(
            f"could not restore {name!r}: not a slot file of this model and KV cache type, "
            f"or more tokens than the context holds ({capacity})")
    slot.tokens = list(tokens[: n_tokens.value])
    slot.lora = job.lora
    slot.n_prompt = len(slot.tokens)
    scheduler.touch(slot)
    return len(slot.tokens), int(n_bytes)
