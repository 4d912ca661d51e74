"""Structured output: replies that are JSON matching a schema, by construction, on real models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI
from pydantic import BaseModel

from tests.api.conftest import ServerProcess, chat, error_of, sse_chunks


class City(BaseModel):
    name: str
    country: str


class Trip(BaseModel):
    cities: list[City]
    days: int


def test_parse_with_a_nested_pydantic_model(qwen: ServerProcess) -> None:
    client = OpenAI(base_url=qwen.base_url, api_key="unused")
    reply = client.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "Plan a 3-day trip to two cities in Italy."}],
        response_format=Trip, max_tokens=200,
    )
    trip = reply.choices[0].message.parsed
    assert isinstance(trip, Trip) and all(isinstance(city, City) for city in trip.cities)


@pytest.mark.parametrize("model", ["qwen", "smollm"])
def test_json_schema_replies_validate(model: str, request: pytest.FixtureRequest) -> None:
    server: ServerProcess = request.getfixturevalue(model)
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 24}, "sure": {"type": "boolean"},
                                               "score": {"type": "integer"}},
              "required": ["answer", "sure", "score"], "additionalProperties": False}
    for field in ("response_format", "json_schema"):
        value: Any = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
        body = {"messages": [{"role": "user", "content": "Is the sky blue?"}], "max_tokens": 60,
                field: value if field == "response_format" else schema}
        reply = chat(server.url, body).json()["choices"][0]
        assert reply["finish_reason"] == "stop", reply  # the grammar ended the reply, not max_tokens
        data = json.loads(reply["message"]["content"])
        assert set(data) == {"answer", "sure", "score"}
        assert isinstance(data["answer"], str) and len(data["answer"]) <= 24 and isinstance(data["sure"], bool) and isinstance(data["score"], int)


def test_json_object_is_any_object_streamed_too(smollm: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "Describe a cat."}], "max_tokens": 60,
            "response_format": {"type": "json_object"}}
    whole = chat(smollm.url, body).json()["choices"][0]
    chunks = sse_chunks(chat(smollm.url, {**body, "stream": True}).content)
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == whole["message"]["content"]
    if whole["finish_reason"] == "stop":
        assert isinstance(json.loads(streamed), dict)
    else:  # cut by max_tokens: still the beginning of an object
        assert streamed.lstrip().startswith("{")


def test_a_gbnf_grammar_constrains_the_reply(smollm: ServerProcess) -> None:
    reply = chat(smollm.url, {"messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 5,
                              "grammar": 'root ::= "yes" | "no"'}).json()["choices"][0]
    assert reply["message"]["content"] in ("yes", "no")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
            "type": "object", "properties": {"a": {"type": "no-such-type"}}}}}}, "response_format.json_schema.schema"),
        ({"json_schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}, "json_schema"),
        ({"grammar": "root ::= undefined-rule"}, "grammar"),
        ({"grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar"),
    ],
)
def test_bad_formats_are_400_naming_the_field(smollm: ServerProcess, body: dict[str, Any], param: str) -> None:
    error = error_of(chat(smollm.url, {"messages": [{"role": "user", "content": "Hi"}], **body}), 400)
    assert error["param"] == param, error
