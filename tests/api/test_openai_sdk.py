"""The openai Python SDK, sync and async, against the real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.api.conftest import NEVER_STOP, ServerProcess

MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0, timeout=60) as client:
        yield client


@pytest.fixture
async def async_client(server: ServerProcess) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="not-needed", max_retries=0,
                                  timeout=60) as client:
        yield client


# -- sync


def test_models_list(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL_FILE]
    assert models[0].object == "model" and models[0].owned_by


def test_chat(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=6, temperature=0, logit_bias=NEVER_STOP,
    )
    assert completion.object == "chat.completion"
    assert completion.model == "default"
    message = completion.choices[0].message
    assert message.role == "assistant" and message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 6


def test_chat_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=6, stream=True, logit_bias=NEVER_STOP,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=3, stream=True,
        stream_options={"include_usage": True}, logit_bias=NEVER_STOP,
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert chunks[-2].choices[0].finish_reason == "length"


def test_chat_with_extra_body_fields(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=2, stop=["\n\n"],
        extra_body={"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20},
    )
    assert completion.choices[0].message.content is not None


def test_embeddings_default_encoding_and_float_agree(client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; "float" comes as JSON numbers.
    default = client.embeddings.create(model="default", input=["Hello world", "Goodbye"])
    floats = client.embeddings.create(model="default", input=["Hello world", "Goodbye"], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1]
    for a, b in zip(default.data, floats.data):
        assert len(a.embedding) == len(b.embedding) == 640
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-6)
    assert default.usage.prompt_tokens > 0


def test_errors_become_sdk_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="default", messages=[], max_tokens=2)
    assert refused.value.status_code == 400
    assert refused.value.param == "messages"
    assert "at least one message" in refused.value.message

    with pytest.raises(openai.BadRequestError) as out_of_range:
        client.chat.completions.create(model="default", messages=MESSAGES, temperature=3)
    assert out_of_range.value.param == "temperature"

    with pytest.raises(openai.NotFoundError):
        client.files.list()  # an endpoint this server does not serve


# -- async


async def test_async_models_list(async_client: openai.AsyncOpenAI) -> None:
    models = [m async for m in async_client.models.list()]
    assert [m.id for m in models] == [MODEL_FILE]


async def test_async_chat(async_client: openai.AsyncOpenAI) -> None:
    completion = await async_client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=4, logit_bias=NEVER_STOP,
    )
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens <= 4


async def test_async_chat_stream(async_client: openai.AsyncOpenAI) -> None:
    stream = await async_client.chat.completions.create(
        model="default", messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True}, logit_bias=NEVER_STOP,
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_async_requests_are_served_concurrently(async_client: openai.AsyncOpenAI) -> None:
    prompts = ["Name a fruit.", "Name a colour.", "Name a city."]
    completions = await asyncio.gather(*(
        async_client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": prompt}], max_tokens=3, logit_bias=NEVER_STOP,
        )
        for prompt in prompts
    ))
    assert [c.usage.completion_tokens for c in completions if c.usage] == [3, 3, 3]
    assert len({c.id for c in completions}) == 3


async def test_async_embeddings(async_client: openai.AsyncOpenAI) -> None:
    result = await async_client.embeddings.create(model="default", input="Hello world")
    [item] = result.data
    assert len(item.embedding) == 640
    assert float(np.linalg.norm(item.embedding)) == pytest.approx(1.0, abs=1e-4)


async def test_async_error(async_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        await async_client.chat.completions.create(model="default", messages=MESSAGES, n=500)
    assert refused.value.param == "n"
