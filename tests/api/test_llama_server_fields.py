"""llama-server's request fields, read into igllama's engine request (tier 1: no model, no server)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from igllama.api.errors import APIError
from igllama.api.fields import Defaults
from igllama.api.llamacpp.completion import parse_native
from igllama.api.llamacpp.replies import selected
from igllama.api.prompts import MAX_PROMPTS, parse_prompts

CAP = Defaults(max_tokens=100, temperature=0.8)


def refused(data: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as caught:
        parse_native(data, CAP)
    return caught.value


def test_prompt_shapes_as_llama_server_reads_them() -> None:
    assert parse_prompts("text") == ["text"]
    assert parse_prompts([1, 2, 3]) == [[1, 2, 3]]  # one prompt of token ids
    assert parse_prompts([12, "text", 34]) == [[12, "text", 34]]  # one mixed prompt
    assert parse_prompts(["a", "b"]) == ["a", "b"]  # two prompts
    assert parse_prompts([[12, "x"], [1, 2], "s"]) == [[12, "x"], [1, 2], "s"]
    for bad in (None, [], [None], [[]], 5, ["a", {"b": 1}]):
        with pytest.raises(APIError) as caught:
            parse_prompts(bad)
        assert caught.value.param == "prompt"
    with pytest.raises(APIError):
        parse_prompts(["x"] * (MAX_PROMPTS + 1))


def test_n_predict_is_capped_and_minus_one_means_the_cap() -> None:
    assert parse_native({"n_predict": 5}, CAP).request.max_tokens == 5
    assert parse_native({"n_predict": -1}, CAP).request.max_tokens == 100
    assert parse_native({}, CAP).request.max_tokens == 100
    assert parse_native({"n_predict": 10**6}, CAP).request.max_tokens == 100
    assert parse_native({"n_predict": 0}, CAP).request.max_tokens == 1  # one token, as llama-server gives
    assert parse_native({"n_predict": -1, "max_tokens": 7}, CAP).request.max_tokens == 7
    assert refused({"n_predict": -2}).param == "n_predict"
    assert refused({"n_predict": "many"}).param == "n_predict"


def test_sampling_fields_and_their_settings() -> None:
    call = parse_native({"temperature": 0.2, "top_k": 5, "seed": 42, "repeat_last_n": 32, "n_probs": 3,
                         "stop": ["\n"], "id_slot": 1, "stream": True}, CAP)
    sampling = call.request.sampling
    assert (sampling.temperature, sampling.top_k, sampling.seed, sampling.repeat_last_n) == (0.2, 5, 42, 32)
    assert call.request.logprobs == 3 and call.request.slot_id == 1 and call.stream
    assert call.settings["seed"] == 42 and call.settings["n_probs"] == 3 and call.settings["stop"] == ["\n"]
    assert parse_native({}, CAP).settings["seed"] == 0xFFFFFFFF  # a random seed, as llama-server writes it
    assert parse_native({"id_slot": -1}, CAP).request.slot_id is None
    assert parse_native({"n_probs": -1}, CAP).request.logprobs is None
    assert refused({"n_probs": 21}).param == "n_probs"
    assert refused({"repeat_last_n": -1}).param == "repeat_last_n"


def test_logit_bias_in_both_forms() -> None:
    bias = parse_native({"logit_bias": [[5, 2.5], [7, False]]}, CAP).request.sampling.logit_bias
    assert bias[0] == (5, 2.5) and bias[1][0] == 7 and bias[1][1] == -math.inf
    assert parse_native({"logit_bias": {"5": -1}}, CAP).request.sampling.logit_bias == ((5, -1.0),)
    for bad in ([["hello", 1]], [[5]], [[-1, 1]], [[5, 200]]):
        assert refused({"logit_bias": bad}).param == "logit_bias"


def test_what_igllama_lacks_is_refused_with_501() -> None:
    for field, value in (("mirostat", 2), ("dry_multiplier", 0.8), ("xtc_probability", 0.5), ("typical_p", 0.9),
                         ("top_n_sigma", 1.0), ("dynatemp_range", 0.5), ("ignore_eos", True),
                         ("post_sampling_probs", True), ("timings_per_token", True)):
        error = refused({field: value})
        assert error.status == 501 and field in error.message
    # Their "off" values, as llama-server's clients send them by default, pass.
    parse_native({"mirostat": 0, "typical_p": 1.0, "top_n_sigma": -1, "ignore_eos": False, "n_keep": -1}, CAP)


def test_samplers_must_sample_as_igllama_does() -> None:
    llama_servers = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
    parse_native({"samplers": llama_servers}, CAP)
    parse_native({"samplers": "edkypmxt"}, CAP)
    parse_native({"samplers": ["top_k", "top_p", "min_p", "temperature"]}, CAP)  # no penalties asked: none active
    assert refused({"samplers": ["temperature", "top_k", "top_p", "min_p"]}).status == 501
    assert refused({"samplers": ["top_k", "temperature"]}).status == 501  # would skip top_p and min_p
    assert refused({"samplers": ["top_k", "top_p", "min_p", "temperature"], "repeat_penalty": 1.1}).status == 501
    assert refused({"samplers": 5}).status == 400


def test_response_fields_pick_by_path() -> None:
    body = {"content": "x", "generation_settings": {"n_predict": 3}, "stop": True}
    assert selected(body, ()) is body
    assert selected(body, ("content", "generation_settings/n_predict", "nope", "stop/x")) == \
        {"content": "x", "generation_settings/n_predict": 3}
    assert refused({"response_fields": "content"}).param == "response_fields"
