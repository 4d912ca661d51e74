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
    # Llama 3.x: <|python_tag|> (a control token the engine renders for requests with tools), or none
    ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [weather("Paris")]),
    ('{"type": "function", "name": "get_weather", "parameters": {"city": "Bern"}}', "", [weather("Bern")]),
    (('Checking.<|python_tag|>{"name": "get_weather", "parameters": {"city": "A"}}; '
      '{"name": "get_time", "parameters": {}}'), "Checking.", [weather("A"), ToolCall("get_time", "{}")]),
    # Mistral v0.3: [TOOL_CALLS] and a JSON array; later tokenizers: name[ARGS]{...}, maybe [CALL_ID]
    ('[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Nice"}, "id": "a1b2c3d4e"}]', "",
     [weather("Nice")]),
    ('[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}', "", [weather("Lyon")]),
    ('Sure.[TOOL_CALLS]get_weather[ARGS]{"city": "Lyon"}[TOOL_CALLS]get_time[CALL_ID]x1[ARGS]{}', "Sure.",
     [weather("Lyon"), ToolCall("get_time", "{}")]),
]

NOT_CALLS = [
    "The weather in Paris is sunny.",
    '{"name": "unknown_tool", "arguments": {}}',  # not a declared tool: plain content
    '{"city": "Paris"}',
    "```python\nprint('hi')\n```",
    "<tool_call>not json</tool_call> and text",  # closed, but no call: shown as it is
    "a < b and <tool_ but not a call",
    '[{"name": "get_weather", "arguments": {}}, 3]',  # one item is not a call: none of it is
    '[ and ] and [TOOL_ and <|python',  # pieces of markers are text
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


def test_a_llama_builtin_tool_call_is_shown_as_text_without_its_marker() -> None:
    reply = '<|python_tag|>brave_search.call(query="weather Paris")'
    for split in every_split(reply):
        assert parse(reply, split)[:2] == ('brave_search.call(query="weather Paris")', []), f"split at {split}"


@pytest.mark.parametrize("reply", [
    'Checking<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
    'Checking[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
])
def test_no_marker_is_shown_before_a_tail_call_is_decided(reply: str) -> None:
    for split in range(len(reply) + 1):
        _, _, shown = parse(reply, split)
        assert "".join(shown) == "Checking", f"split at {split}: {shown}"
        for piece in shown:
            assert "|" not in piece and "[" not in piece, f"split at {split}: {shown}"


STREAMED = [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
    ('Text first. <tool_call>{"name": "get_time", "arguments": {"zone": "a}\\"{[", "n": [1, {"x": []}]}}</tool_call>'
     '\n<tool_call>{"name": "get_weather", "parameters": {"city": "Oslo"}}</tool_call>'),
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}',  # never closed
]


@pytest.mark.parametrize("reply", STREAMED)
def test_streamed_pieces_join_to_the_calls_a_whole_reply_reports(reply: str) -> None:
    for split in every_split(reply):
        parser = ToolCallParser(TOOLS)
        pieces = [reply] if split is None else [reply[:split], reply[split:]]
        deltas = []
        for piece in pieces:
            parser.feed(piece)
            deltas += parser.take_deltas()
        parser.finish()
        deltas += parser.take_deltas()
        names = {d.index: d.name for d in deltas if d.name}
        arguments: dict[int, str] = {}
        for d in deltas:
            assert d.name or d.index in names, f"split at {split}: arguments before the name"
            arguments[d.index] = arguments.get(d.index, "") + d.arguments
        assert parser.n_streamed == len(parser.calls), f"split at {split}"
        assert [ToolCall(names[i], arguments[i]) for i in sorted(names)] == parser.calls, f"split at {split}"
        for call in parser.calls:
            json.loads(call.arguments)


def test_a_call_streams_token_by_token_without_its_closing_markup() -> None:
    parser = ToolCallParser(TOOLS, prefix='<tool_call>\n{"name": "')
    reply = 'get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    pieces = []
    for c in reply:
        parser.feed(c)
        pieces += [d.arguments for d in parser.take_deltas()]
    assert parser.finish() == ""
    assert pieces[0] == "" and "".join(pieces) == '{"city": "Paris"}'
    assert len(pieces) > 10, "the arguments came out whole, not in pieces"
