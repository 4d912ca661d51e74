"""With tool_choice "auto", a call the model opens is made valid by a lazy grammar."""

from __future__ import annotations

import json

from igllama.engine import (
    ChatMessage,
    CompletionRequest,
    Engine,
    SamplingParams,
    ToolChoice,
    ToolSpec,
)
from tests.engine.conftest import run

WEATHER = ToolSpec("get_weather", "Get the current weather in a city",
                   {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                    "required": ["city"]})


async def test_a_call_the_model_opens_is_valid_by_construction(engine: Engine) -> None:
    # Push the demo model (a base model that knows no tool format) to write
    # "<tool_call>" over and over: once it has opened a call, only the grammar's
    # tokens may follow, so what comes out is one valid call, not a loop of tags.
    opening = engine.model.tokenize("<tool_call>", add_special=False)
    sampling = SamplingParams(temperature=0.0, logit_bias=tuple((token, 30.0) for token in opening))
    request = CompletionRequest((ChatMessage("user", "What is the weather in Paris?"),), max_tokens=60,
                                sampling=sampling, tools=(WEATHER,), tool_choice=ToolChoice("auto"))
    deltas, done = await run(engine, request)
    assert done.finish_reason == "tool_calls", (deltas, done)
    [call] = done.tool_calls
    assert call.name == "get_weather"
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"city"} and len(arguments["city"]) <= 12
    assert "<tool_call>" not in "".join(deltas)
