"""Sampling with llama.cpp's sampler chain, in C.

One chain per request: penalties and the random generator hold state. The
logits are not copied into Python (the demo model's vocabulary has 262k
entries, about 1 MB a token); `Sampler.sample` returns just the chosen token id.

Plain greedy decoding (no bias, no penalties) skips the chain: llama.cpp's
sampling API first copies every logit into a candidate array (3 MB a token
here, ~0.5 ms), where an argmax over llama.cpp's own logits buffer picks the
same token (the first of equal maxima, as the greedy sampler does) in ~0.1 ms
right after a decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.errors import InputError


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to choose each token. `temperature` 0 means greedy."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int | None = None
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str = ""  # GBNF the reply must follow (root rule "root"), "" for none

    @property
    def has_penalties(self) -> bool:
        return (
            self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
        ) and self.repeat_last_n != 0

    @property
    def is_greedy(self) -> bool:
        # Below ~1e-3, logits / temperature overflow to inf and the draw turns
        # to noise; such a temperature means greedy anyway.
        return self.temperature < 1e-3


class Sampler:
    """A llama.cpp sampler chain built in llama-server's order: logit bias,
    penalties, top-k, top-p, min-p, temperature, then the draw (greedy at 0);
    no chain at all for plain greedy."""

    __slots__ = ("_chain", "_n_vocab")

    def __init__(
        self, params: SamplingParams, n_vocab: int, prompt: Sequence[int] = (), vocab: llama.llama_vocab_p | None = None
    ) -> None:
        self._n_vocab = n_vocab
        self._chain = None
        if params.is_greedy and not params.logit_bias and not params.has_penalties and not params.grammar:
            return  # `sample` takes the argmax itself
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        self._chain = chain
        add = llama.llama_sampler_chain_add  # the chain owns and frees what is added
        if params.grammar:
            grammar = llama.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.close()
                raise InputError("llama.cpp could not compile the grammar for this request")
            add(chain, grammar)  # first: every later stage sees only the tokens it allows
        if params.logit_bias:
            biases = (llama.llama_logit_bias * len(params.logit_bias))()
            for item, (token, bias) in zip(biases, params.logit_bias):
                item.token = token
                item.bias = bias
            add(chain, llama.llama_sampler_init_logit_bias(n_vocab, len(params.logit_bias), biases))
        if params.has_penalties:
            add(
                chain,
                llama.llama_sampler_init_penalties(
                    n_vocab,
                    params.repeat_last_n,
                    params.repeat_penalty,
                    params.frequency_penalty,
                    params.presence_penalty,
                ),
            )
        if params.is_greedy:
            add(chain, llama.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(chain, llama.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(chain, llama.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(chain, llama.llama_sampler_init_min_p(params.min_p, 1))
            add(chain, llama.llama_sampler_init_temp(params.temperature))
            seed = llama.LLAMA_DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
            add(chain, llama.llama_sampler_init_dist(seed))
        if params.has_penalties:
            # Like llama-server, let the penalties see the end of the prompt.
            for token in prompt[-params.repeat_last_n :] if params.repeat_last_n > 0 else prompt:
                llama.llama_sampler_accept(chain, token)

    def sample(self, ctx: llama.llama_context_p, output_index: int) -> int:
        """Choose (and accept) a token from output `output_index` of the last decode."""
        if self._chain is None:
            logits = llama.llama_get_logits_ith(ctx, output_index)
            return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
        return llama.llama_sampler_sample(self._chain, ctx, output_index)

    def close(self) -> None:
        if self._chain:
            llama.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        self.close()
