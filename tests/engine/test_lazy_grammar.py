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


async def test_greedy_under_a_grammar_picks_what_a_full_vocabulary_pass_picks(engine: Engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """After a refusal a greedy request tries the next best tokens one by one
    instead of running the grammar over all 262k; the reply must not change."""
    from igllama.engine import json_grammar
    from igllama.engine.sampling import Sampler

    schema = {"type": "object", "properties": {"people": {"type": "array", "items": {
        "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"]}}}, "required": ["people"]}
    request = CompletionRequest((ChatMessage("user", "List people with their ages as JSON."),), max_tokens=60,
                                sampling=SamplingParams(temperature=0.0), cache_prompt=False,
                                grammar=json_grammar(schema, "schema"))
    tried: list[int] = []
    best_allowed = Sampler._best_allowed

    def counting(self: Sampler, logits) -> int:  # type: ignore[no-untyped-def]
        tried.append(best_allowed(self, logits))
        return tried[-1]

    monkeypatch.setattr(Sampler, "_best_allowed", counting)
    fast, _ = await run(engine, request)
    assert any(token >= 0 for token in tried), "the grammar never refused a first choice: nothing was tested"
    monkeypatch.setattr(Sampler, "_best_allowed", lambda self, logits: -1)
    full, _ = await run(engine, request)
    assert "".join(fast) == "".join(full)
