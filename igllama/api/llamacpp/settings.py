"""llama-server's `generation_settings` / `params` object: what a request samples with.

It appears in `/props` (`default_generation_settings.params`), in `/slots`
(each busy slot's `params`) and in every `/completion` reply. igllama's own
sampler chain has no DRY, XTC, mirostat, typical-p, top-n-sigma or dynamic
temperature: those keys carry llama-server's "off" values, which is what they
are here (a request that turns one on is refused with 501, see completion.py).
"""

from __future__ import annotations

from typing import Any

from igllama.engine import SamplingParams

RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a new seed per request
# igllama's chain, in llama-server's names (igllama/engine/sampling.py builds it in this order).
SAMPLERS = ("penalties", "top_k", "top_p", "min_p", "temperature")

# Samplers and options igllama does not have, with the value that turns each off in llama-server.
OFF: dict[str, Any] = {
    "dynatemp_range": 0.0,
    "top_n_sigma": -1.0,
    "xtc_probability": 0.0,
    "typical_p": 1.0,
    "dry_multiplier": 0.0,
    "mirostat": 0,
    "ignore_eos": False,
    "post_sampling_probs": False,
    "timings_per_token": False,
}


def generation_params(
    sampling: SamplingParams, n_predict: int, *, stop: tuple[str, ...] = (), stream: bool = False,
    n_probs: int = 0, grammar: str = "",
) -> dict[str, Any]:
    """The settings of one request (or the server's defaults) under llama-server's keys."""
    return {
        "seed": sampling.seed if sampling.seed is not None and sampling.seed >= 0 else RANDOM_SEED,
        "temperature": sampling.temperature,
        "dynatemp_range": OFF["dynatemp_range"],
        "dynatemp_exponent": 1.0,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "top_n_sigma": OFF["top_n_sigma"],
        "xtc_probability": OFF["xtc_probability"],
        "xtc_threshold": 0.1,
        "typical_p": OFF["typical_p"],
        "repeat_last_n": sampling.repeat_last_n,
        "repeat_penalty": sampling.repeat_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "dry_multiplier": OFF["dry_multiplier"],
        "dry_base": 1.75,
        "dry_allowed_length": 2,
        "dry_penalty_last_n": -1,
        "mirostat": OFF["mirostat"],
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "stop": list(stop),
        "max_tokens": n_predict,
        "n_predict": n_predict,
        "n_keep": 0,  # (accepted, without effect: igllama never shifts the context nor cuts a prompt)
        "n_discard": 0,
        "ignore_eos": OFF["ignore_eos"],
        "stream": stream,
        "logit_bias": [[token, bias] for token, bias in sampling.logit_bias],
        "n_probs": n_probs,
        "min_keep": 0,
        "grammar": grammar or sampling.grammar,
        "samplers": list(SAMPLERS),
        "timings_per_token": OFF["timings_per_token"],
        "post_sampling_probs": OFF["post_sampling_probs"],
    }
