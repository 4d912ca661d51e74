"""The tool-call parser, on every form it knows, fed whole and split at every character."""

from __future__ import annotations

import json

import pytest

from igllama.engine.tool_calls import ToolCall, ToolCallParser

TOOLS = ("get_weather", "get_time")


def parse(reply: str, split: int | None = None, prefix: str = "") -> tuple[str, list[ToolCall], list[str]]:
    """(content, calls, what feed showed piece by piece) for `reply` fed in two pieces at `split`."""
    parser = ToolCallParser(TOOLS, prefix)
    pieces = [reply] if split is None else [reply[:split], reply[split:]]
    shown = [parser.feed(piece) for piece in pieces]
    shown.append(parser.finish())
    return "".join(shown), parser.calls, shown


def every_split(reply: str) -> list[int | None]:
    return [None, *range(len(reply) + 1)]


def weather(city: str) -> ToolCall:
    return ToolCall("get_weather", json.dumps({"city": city}))


CASES = [
    # Hermes / Qwen tags, alone, with text around, two calls, white space between
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", [weather("Paris")]),
    ('Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>',
     "Let me check.\n", [weather("Oslo")]),
    (('<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>\n'
     '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'), "", [weather("A"), ToolCall("get_time", "{}")]),
    # a block the model did not close before it stopped
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n', "", [weather("Rome")]),
    # "parameters" (Llama style) and arguments as a JSON string
    ('<tool_call>{"name": "get_weather", "parameters": {"city": "Lima"}}</tool_call>', "", [weather("Lima")]),
    ('<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Kyiv\\"}"}</tool_call>', "", [weather("Kyiv")]),
    # bare and fenced JSON, the whole reply: what small models often write instead
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "", [weather("Paris")]),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n```', "", [weather("Paris")]),
    ('[{"name": "get_weather", "arguments": {"city": "X"}}, {"name": "get_time", "arguments": {}}]', "",
     [weather("X"), ToolCall("get_time", "{}")]),
]

NOT_CALLS = [
    "The weather in Paris is sunny.",
    '{"name": "unknown_tool", "arguments": {}}',  # not a declared tool: plain content
    '{"city": "Paris"}',
    "```python\nprint('hi')\n```",
    "<tool_call>not json</tool_call> and text",  # closed, but no call: shown as it is
    "a < b and <tool_ but not a call",
    '[{"name": "get_weather", "arguments": {}}, 3]',  # one item is not a call: none of it is
]


@pytest.mark.parametrize(("reply", "content", "calls"), CASES)
def test_calls_are_found_however_the_text_arrives(reply: str, content: str, calls: list[ToolCall]) -> None:
    for split in every_split(reply):
        got_content, got_calls, _ = parse(reply, split)
        assert (got_content, got_calls) == (content, calls), f"split at {split}"


@pytest.mark.parametrize("reply", NOT_CALLS)
def test_text_that_is_no_call_is_all_content(reply: str) -> None:
    for split in every_split(reply):
        content, calls, _ = parse(reply, split)
        assert (content, calls) == (reply, []), f"split at {split}"


def test_a_call_cut_off_at_the_end_is_dropped_not_shown() -> None:
    reply = 'Let me look.\n<tool_call>\n{"name": "get_wea'
    for split in every_split(reply):
        assert parse(reply, split)[:2] == ("Let me look.\n", []), f"split at {split}"


def test_no_markup_is_shown_before_the_call_is_decided() -> None:
    reply = 'Checking<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    for split in range(len(reply) + 1):
        _, _, shown = parse(reply, split)
        for piece in shown:
            assert "<" not in piece and "{" not in piece, f"split at {split}: {shown}"


def test_text_streams_before_a_call_opens() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("The answer is ") == "The answer is "
    assert parser.feed("near <to") == "near "  # might open a call: held
    assert parser.feed("p secret") == "<top secret"


def test_a_forced_call_continues_from_its_prefilled_opening() -> None:
    prefix = '<tool_call>\n{"name": "'
    content, calls, _ = parse('get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', prefix=prefix)
    assert (content, calls) == ("", [weather("Paris")])
