"""LoRA adapters (llama-server's `--lora`): loading them, their scales, and applying them to a decode.

llama.cpp applies adapters to a whole llama_context (`llama_set_adapters_lora`),
not to a sequence: every token of one `llama_decode` goes through the same
adapters at the same scales. So each request carries its adapters as a
`LoraKey`, resolved when it is submitted; the scheduler puts only requests
with equal keys in one batch (scheduler.py), and the worker sets the
context's adapters before each decode when the key changes. A KV cache
computed under one key is not reused for another: the prefix cache keys
its entries by it too.

A key lists only adapters with a nonzero scale, so scale 0 is the same as no
adapter, exactly: llama.cpp is not asked to add a zero product.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama

from igllama.engine import logs
from igllama.engine.errors import InputError
from igllama.engine.model import Model, ModelLoadError

# (adapter id, scale) for every adapter with a nonzero scale, by id: what one decode applies.
LoraKey = tuple[tuple[int, float], ...]

# A scale this large already swamps the model's own weights; beyond it a typo, not a choice.
MAX_SCALE = 100.0


class LoraError(InputError):
    """A `lora` entry naming an adapter the server did not load, or a scale out of range."""

    param = "lora"


@dataclass(frozen=True, slots=True)
class LoraSpec:
    """An adapter file to load and its scale at start (llama-server's `--lora` / `--lora-scaled`)."""

    path: str
    scale: float = 1.0


class Adapters:
    """The adapters loaded for one model, and the global scales that requests without a
    `lora` field use (llama-server's `POST /lora-adapters`).

    Loading happens while the model loads; `key` and `set_scales` run on the event loop
    (plain reads and one list swap); `apply` runs on the engine thread only. llama.cpp
    frees the adapters with their model."""

    def __init__(self, model: Model, specs: Iterable[LoraSpec], apply_at_start: bool = True) -> None:
        self.paths: list[str] = []
        self._pointers: list[Any] = []
        scales: list[float] = []
        for spec in specs:
            check_scale(spec.scale, f"the scale of {spec.path}")
            if not os.path.isfile(spec.path):
                raise ModelLoadError(f"LoRA adapter not found: {spec.path}")
            logs.forget_last_error()
            pointer = llama.llama_adapter_lora_init(model.pointer, os.fsencode(spec.path))
            if not pointer:
                reason = logs.last_error() or "unknown error"
                raise ModelLoadError(f"llama.cpp could not load the LoRA adapter {spec.path}: {reason}")
            self.paths.append(spec.path)
            self._pointers.append(pointer)
            scales.append(spec.scale if apply_at_start else 0.0)  # --lora-init-without-apply: all at 0
        self.scales: tuple[float, ...] = tuple(scales)
        self._applied: LoraKey = ()  # what the context has now (engine thread)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def default_key(self) -> LoraKey:
        """The key of a request that names no adapters: the global scales."""
        return tuple((i, scale) for i, scale in enumerate(self.scales) if scale != 0.0)

    def key(self, entries: tuple[tuple[int, float], ...] | None) -> LoraKey:
        """A request's adapters: the global scales when it gives none (as llama-server, an
        empty list too); else the listed scales, and 0 for every adapter not listed."""
        if not entries:
            return self.default_key
        scales = self._scales(entries)
        return tuple((i, scale) for i, scale in enumerate(scales) if scale != 0.0)

    def set_scales(self, entries: tuple[tuple[int, float], ...]) -> None:
        """New global scales: the listed ones, 0 for the others (llama-server's POST /lora-adapters).
        Requests already submitted keep the scales they were submitted with."""
        self.scales = self._scales(entries)

    def _scales(self, entries: tuple[tuple[int, float], ...]) -> tuple[float, ...]:
        scales = [0.0] * len(self.paths)
        for adapter_id, scale in entries:
            if not 0 <= adapter_id < len(self.paths):
                loaded = f"ids 0..{len(self.paths) - 1}" if self.paths else "none: start it with --lora FILE"
                raise LoraError(f"lora: no adapter with id {adapter_id} is loaded (loaded: {loaded})")
            check_scale(scale, f"lora: the scale of adapter {adapter_id}")
            scales[adapter_id] = float(scale)
        return tuple(scales)

    def apply(self, ctx: Any, key: LoraKey) -> None:
        """Make the context's adapters `key`'s (engine thread; a no-op when they already are)."""
        if key == self._applied:
            return
        n = len(key)
        pointers = (llama.llama_adapter_lora_p_ctypes * max(n, 1))(*(self._pointers[i] for i, _ in key))
        scales = (ctypes.c_float * max(n, 1))(*(scale for _, scale in key))
        if llama.llama_set_adapters_lora(ctx, pointers, n, scales) != 0:
            raise RuntimeError("llama.cpp refused to set the LoRA adapters")
        self._applied = key


def check_scale(scale: float, what: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or abs(scale) > MAX_SCALE:
        raise LoraError(f"{what} must be a number between {-MAX_SCALE:g} and {MAX_SCALE:g}, not {scale!r}")
