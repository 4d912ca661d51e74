"""lm-eval's `local-completions` model scoring through igllama.

The request shapes are lm-eval 0.4.13's (lm_eval/models/openai_completions.py,
`_create_payload(generate=False)`; api_models.py sends token ids when a
tokenizer is set): `{"model", "prompt": [[ids], ...], "temperature": 0,
"max_tokens": 1, "logprobs": 1, "seed", "echo": true}`, read back by its
`parse_logprobs`: the sum of `token_logprobs[ctxlen:-1]` (the last entry is the
generated token) and whether each continuation token was the most likely.
They are replayed here without lm-eval, and lm-eval itself runs a small
offline task against the server when it is installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.api.conftest import TIMEOUT, Reference, ServerProcess

SEED = 1234  # lm-eval's default
QUESTIONS = [
    ("Question: What is the capital of France?\nAnswer:", ["Paris", "Berlin", "Madrid"], 0),
    ("Question: What is the capital of Germany?\nAnswer:", ["Rome", "Berlin", "Lisbon"], 1),
    ("Question: What is the capital of Italy?\nAnswer:", ["Vienna", "Athens", "Rome"], 2),
]
DELIMITER = " "  # lm-eval's target_delimiter: a multiple-choice continuation is " " + the choice
ROLLING_TEXT = "The quick brown fox jumps over the lazy dog. It was a sunny day in the park."


def remote_encode(server: ServerProcess, text: str) -> list[int]:
    """lm-eval's `tokenizer_backend=remote` encode: vLLM's /tokenize shape, no special tokens added."""
    response = requests.post(f"{server.url}/tokenize", json={"prompt": text, "add_special_tokens": False},
                             timeout=TIMEOUT)
    tokens = response.json().get("tokens")
    assert isinstance(tokens, list)
    return tokens


def loglikelihood_payload(prompts: list[list[int]]) -> dict[str, Any]:
    return {"model": "gemma", "prompt": prompts, "temperature": 0, "max_tokens": 1, "logprobs": 1,
            "seed": SEED, "echo": True}


def parse_logprobs(outputs: dict[str, Any], ctxlens: list[int]) -> list[tuple[float, bool]]:
    """What lm-eval's LocalCompletionsAPI.parse_logprobs computes from a reply."""
    results = []
    for choice, ctxlen in zip(sorted(outputs["choices"], key=itemgetter("index")), ctxlens, strict=False):
        token_logprobs = choice["logprobs"]["token_logprobs"][ctxlen:-1]
        tops = choice["logprobs"]["top_logprobs"][ctxlen:-1]
        greedy = all(lp == max(top.values()) for lp, top in zip(token_logprobs, tops, strict=False))
        results.append((sum(token_logprobs), greedy))
    return results


def expected(reference: Reference, tokens: list[int], ctxlen: int) -> tuple[float, bool]:
    rows = reference(tokens)
    picks = [(rows[i - 1, tokens[i]], rows[i - 1].argmax() == tokens[i]) for i in range(ctxlen, len(tokens))]
    return float(sum(p for p, _ in picks)), all(g for _, g in picks)


def pairs(server: ServerProcess) -> list[tuple[list[int], int]]:
    """Each (context, continuation) as lm-eval encodes it: the whole text's tokens, the context's length."""
    encoded = []
    for context, choices, _ in QUESTIONS:
        context_tokens = remote_encode(server, context)
        for choice in choices:
            whole = remote_encode(server, context + DELIMITER + choice)
            encoded.append((context_tokens + whole[len(context_tokens):], len(context_tokens)))
    return encoded


def test_loglikelihood_requests_as_lm_eval_sends_them(scoring_server: ServerProcess, reference: Reference) -> None:
    encoded = pairs(scoring_server)
    reply = requests.post(f"{scoring_server.url}/v1/completions",
                          json=loglikelihood_payload([tokens for tokens, _ in encoded]), timeout=TIMEOUT)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    for choice, (tokens, _) in zip(body["choices"], encoded, strict=True):
        assert len(choice["logprobs"]["token_logprobs"]) == len(tokens) + 1  # the prompt, then max_tokens 1
    for (score, greedy), (tokens, ctxlen) in zip(parse_logprobs(body, [c for _, c in encoded]), encoded, strict=True):
        want_score, want_greedy = expected(reference, tokens, ctxlen)
        assert abs(score - want_score) < 1e-3 * (len(tokens) - ctxlen)
        assert greedy == want_greedy


def test_the_parse_is_lm_evals_own(scoring_server: ServerProcess) -> None:
    openai_completions = pytest.importorskip("lm_eval.models.openai_completions")
    encoded = pairs(scoring_server)[:3]
    body = requests.post(f"{scoring_server.url}/v1/completions",
                         json=loglikelihood_payload([tokens for tokens, _ in encoded]), timeout=TIMEOUT).json()
    ctxlens = [c for _, c in encoded]
    assert openai_completions.LocalCompletionsAPI.parse_logprobs(body, ctxlens=ctxlens) == parse_logprobs(body, ctxlens)


def test_loglikelihood_rolling_request_as_lm_eval_sends_it(scoring_server: ServerProcess, reference: Reference) -> None:
    # A text shorter than the context makes one window: the BOS as context, every token after it scored.
    info = requests.get(f"{scoring_server.url}/tokenizer_info", timeout=TIMEOUT).json()
    [bos] = remote_encode(scoring_server, info["bos_token"])
    tokens = [bos, *remote_encode(scoring_server, ROLLING_TEXT)]
    body = requests.post(f"{scoring_server.url}/v1/completions", json=loglikelihood_payload([tokens]),
                         timeout=TIMEOUT).json()
    [(score, _)] = parse_logprobs(body, [1])
    want, _ = expected(reference, tokens, 1)
    assert abs(score - want) < 1e-3 * len(tokens)
    assert score < 0.0


TASK = """\
task: tiny_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""


def test_lm_eval_scores_a_multiple_choice_task(scoring_server: ServerProcess, reference: Reference,
                                               tmp_path: Path) -> None:
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'lm-eval[api]')")
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS))
    (tmp_path / "tiny_capitals.yaml").write_text(TASK.format(data=data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    run = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
         f"base_url={scoring_server.base_url}/completions,tokenizer_backend=remote,model=gemma",
         "--batch_size", "4", "--tasks", "tiny_capitals", "--include_path", str(tmp_path),
         "--output_path", str(tmp_path / "out"), "--log_samples"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    [samples_file] = (tmp_path / "out").rglob("samples_tiny_capitals_*.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=itemgetter("doc_id"))
    encoded = pairs(scoring_server)
    for sample in samples:
        scores = [float(resp[0][0]) for resp in sample["resps"]]  # ((loglikelihood, is_greedy),) as text
        for k, score in enumerate(scores):
            tokens, ctxlen = encoded[sample["doc_id"] * 3 + k]
            assert abs(score - expected(reference, tokens, ctxlen)[0]) < 1e-3 * (len(tokens) - ctxlen)
        assert sample["acc"] == float(int(np.argmax(scores)) == QUESTIONS[sample["doc_id"]][2])


def test_the_tokenizer_routes_answer_in_vllms_shapes(scoring_server: ServerProcess) -> None:
    info = requests.get(f"{scoring_server.url}/tokenizer_info", timeout=TIMEOUT).json()
    assert (info["bos_token"], info["eos_token"]) == ("<bos>", "<eos>")
    assert info["model_max_length"] == 2048
    [eos] = remote_encode(scoring_server, info["eos_token"])  # lm-eval's eos_token_id
    assert eos == 1
    tokens = remote_encode(scoring_server, ROLLING_TEXT)
    detokenized = requests.post(f"{scoring_server.url}/detokenize", json={"tokens": tokens}, timeout=TIMEOUT).json()
    assert detokenized["prompt"] == detokenized["content"] == ROLLING_TEXT
    with_bos = requests.post(f"{scoring_server.url}/tokenize", json={"prompt": ROLLING_TEXT}, timeout=TIMEOUT).json()
    assert with_bos["tokens"] == [2, *tokens] and with_bos["count"] == len(tokens) + 1  # vLLM adds specials by default
