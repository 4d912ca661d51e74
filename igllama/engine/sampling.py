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

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama
import numpy as np

from igllama.engine.errors import GrammarError
from igllama.engine.gbnf_limits import check_gbnf


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
    # With these regular expressions the grammar is lazy: it engages only once
    # the reply matches one, from the match on (llama.cpp's lazy grammars).
    grammar_triggers: tuple[str, ...] = ()

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
    no chain at all for plain greedy.

    A grammar stays outside the chain. Checking one token against it is
    cheap and applying it to every token of the vocabulary is not (the
    grammar sampler walks each token's text: 3x slower generation on the
    demo model's 262k tokens), so, like llama-server, the token is chosen
    without the grammar, then checked; only a refused token sends the whole
    vocabulary through the grammar to choose again.
    """

    __slots__ = ("_candidates", "_chain", "_grammar", "_ids", "_n_vocab", "_one", "_one_view", "_view", "params")

    def __init__(
        self, params: SamplingParams, n_vocab: int, prompt: Sequence[int] = (), vocab: llama.llama_vocab_p | None = None
    ) -> None:
        self.params = params
        self._n_vocab = n_vocab
        self._chain = None
        self._grammar = None
        if params.grammar:
            check_gbnf(params.grammar)  # llama.cpp's parser would crash on some (stack overflow)
            self._grammar = _grammar_sampler(vocab, params.grammar, params.grammar_triggers)
            if not self._grammar:
                raise GrammarError("llama.cpp could not compile the grammar (GBNF, root rule `root`); "
                                   "run the server with -v to see its message")
            self._ids = np.arange(n_vocab, dtype=np.int32)
            self._candidates, self._view = _candidate_array(n_vocab)
            self._one, self._one_view = _candidate_array(1)
        if params.is_greedy and not params.logit_bias and not params.has_penalties:
            return  # `sample` takes the argmax itself
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        self._chain = chain
        add = llama.llama_sampler_chain_add  # the chain owns and frees what is added
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
        if self._grammar is None:
            if self._chain is None:
                logits = llama.llama_get_logits_ith(ctx, output_index)
                return int(np.ctypeslib.as_array(logits, shape=(self._n_vocab,)).argmax())
            return llama.llama_sampler_sample(self._chain, ctx, output_index)
        logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, output_index), shape=(self._n_vocab,))
        token = self._choose(logits, through_grammar=False)
        if not self._allowed(token):
            token = self._best_allowed(logits) if self._chain is None else -1
            if token < 0:
                token = self._choose(logits, through_grammar=True)
        if self._chain is not None:
            llama.llama_sampler_accept(self._chain, token)
        llama.llama_sampler_accept(self._grammar, token)
        return token

    def _choose(self, logits: np.ndarray, through_grammar: bool) -> int:
        """A token by the chain (or the argmax), over the grammar's tokens only if `through_grammar`."""
        if self._chain is None and not through_grammar:
            return int(logits.argmax())
        candidates, view = self._candidates, self._view
        candidates["id"] = self._ids  # the chain sorts and cuts the array in place
        candidates["logit"] = logits
        candidates["p"] = 0.0
        view.size, view.selected, view.sorted = self._n_vocab, -1, False
        if through_grammar:
            llama.llama_sampler_apply(self._grammar, ctypes.byref(view))
        if self._chain is None:
            return int(candidates["id"][int(candidates["logit"].argmax())])
        llama.llama_sampler_apply(self._chain, ctypes.byref(view))
        return int(candidates["id"][view.selected])

    def _best_allowed(self, logits: np.ndarray) -> int:
        """Plain greedy after a refusal: the most likely token the grammar allows
        among the next few, checked one by one (what a pass of the grammar over
        the whole vocabulary would pick, for a fraction of its cost); -1 if none is."""
        top = np.argpartition(logits, -_GREEDY_TRIES)[-_GREEDY_TRIES:]
        for token in top[np.lexsort((top, -logits[top]))]:  # by logit, then id, as argmax breaks ties
            if self._allowed(int(token)):
                return int(token)
        return -1

    def _allowed(self, token: int) -> bool:
        one, view = self._one, self._one_view
        one["id"][0], one["logit"][0], one["p"][0] = token, 0.0, 0.0
        view.size, view.selected, view.sorted = 1, -1, False
        llama.llama_sampler_apply(self._grammar, ctypes.byref(view))
        return bool(np.isfinite(one["logit"][0]))

    def close(self) -> None:
        if self._chain:
            llama.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            llama.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()


# Tokens a greedy request tries, best first, after the grammar refused its first
# choice, before it runs the grammar over the whole vocabulary.
_GREEDY_TRIES = 256

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def _candidate_array(n: int) -> tuple[np.ndarray, llama.llama_token_data_array]:
    """A llama_token_data array of `n` entries in numpy memory, and the struct that points at it."""
    if _TOKEN_DATA.itemsize != ctypes.sizeof(llama.llama_token_data):
        raise RuntimeError("llama_token_data is not {int32 id; float logit; float p} in these bindings")
    data = np.zeros(n, dtype=_TOKEN_DATA)
    view = llama.llama_token_data_array(
        data=data.ctypes.data_as(llama.llama_token_data_p), size=n, selected=-1, sorted=False
    )
    return data, view


def _grammar_sampler(vocab: llama.llama_vocab_p | None, grammar: str, triggers: tuple[str, ...]) -> Any:
    if not triggers:
        return llama.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
    no_tokens = (llama.llama_token * 1)()
    return llama.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.encode(), b"root", patterns, len(triggers), no_tokens, 0
    )
