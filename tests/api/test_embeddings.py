"""/v1/embeddings over real sockets: strings, lists, token arrays, base64."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from igllama.engine.model import Model, ModelConfig
from tests.api.conftest import TIMEOUT, ServerProcess

N_EMBD = 640  # Gemma 3 270M's hidden size


def embed(server: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{server.url}/v1/embeddings", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def vectors(reply: dict[str, Any]) -> list[np.ndarray]:
    assert [item["index"] for item in reply["data"]] == list(range(len(reply["data"])))
    return [np.asarray(item["embedding"], dtype=np.float32) for item in reply["data"]]


@pytest.fixture(scope="module")
def tokenizer(model_path: str) -> Iterator[Model]:
    model = Model(ModelConfig(model_path))
    yield model
    model.close()


def test_one_string_gives_one_unit_vector(server: ServerProcess) -> None:
    reply = embed(server, {"input": "Hello world"})
    assert reply["object"] == "list"
    assert reply["model"] == "gemma-3-270m-q4_k_m.gguf"
    [item] = reply["data"]
    assert item["object"] == "embedding" and item["index"] == 0
    [vector] = vectors(reply)
    assert vector.shape == (N_EMBD,)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] > 0


def test_a_list_keeps_its_order_and_matches_single_requests(server: ServerProcess) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell today.", "A kitten sleeps."]
    together = vectors(embed(server, {"input": texts}))
    alone = [vectors(embed(server, {"input": text}))[0] for text in texts]
    assert len(together) == 3
    for batched, single in zip(together, alone):
        assert float(batched @ single) > 0.999
    # Different texts are different vectors, and related ones are closer.
    assert float(together[0] @ together[2]) > float(together[0] @ together[1])


def test_usage_counts_every_input(server: ServerProcess) -> None:
    one = embed(server, {"input": "Hello world"})["usage"]["prompt_tokens"]
    two = embed(server, {"input": ["Hello world", "Hello world"]})["usage"]["prompt_tokens"]
    assert two == 2 * one


def test_token_arrays_embed_like_their_text(server: ServerProcess, tokenizer: Model) -> None:
    tokens = tokenizer.tokenize("Hello world", add_special=True)
    [from_text] = vectors(embed(server, {"input": "Hello world"}))
    [from_flat_ids] = vectors(embed(server, {"input": tokens}))
    from_id_arrays = vectors(embed(server, {"input": [tokens, tokens[:2]]}))
    assert float(from_flat_ids @ from_text) > 0.999
    assert float(from_id_arrays[0] @ from_text) > 0.999
    assert float(from_id_arrays[1] @ from_text) < 0.999  # a different input
    assert embed(server, {"input": [tokens]})["usage"]["prompt_tokens"] == len(tokens)


def test_base64_decodes_to_the_float_vector(server: ServerProcess) -> None:
    texts = ["Hello world", "Goodbye"]
    as_floats = vectors(embed(server, {"input": texts, "encoding_format": "float"}))
    encoded = embed(server, {"input": texts, "encoding_format": "base64"})
    for item, expected in zip(encoded["data"], as_floats):
        assert isinstance(item["embedding"], str)
        decoded = np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-6)


def test_model_is_echoed(server: ServerProcess) -> None:
    assert embed(server, {"input": "Hi", "model": "text-embedding-3-small"})["model"] == "text-embedding-3-small"
