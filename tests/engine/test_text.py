"""The text stages: UTF-8 assembly, `</think>` stripping and stop strings (tier 1)."""

from __future__ import annotations

import pytest

from igllama.engine.model import Model
from igllama.engine.text import (
    ReasoningSplitter,
    StopMatcher,
    TextPipeline,
    ThinkStripper,
    Utf8Assembler,
)


def feed_all(stage: object, parts: list) -> list[str]:
    out = [stage.feed(p) for p in parts]  # type: ignore[attr-defined]
    out.append(stage.flush())  # type: ignore[attr-defined]
    return [o for o in out if o]


def test_a_character_split_over_tokens_is_emitted_once_whole(gemma: Model) -> None:
    text = "Llamas 🦙 and 𝄞 clefs: ṩ"
    tokens = gemma.tokenize(text, add_special=False)
    pieces = [gemma.piece(t) for t in tokens]
    # The model's byte-fallback tokens really do split these characters.
    assert any(_is_broken_utf8(p) for p in pieces)
    emitted = feed_all(Utf8Assembler(), pieces)
    assert "".join(emitted) == text
    assert all("\ufffd" not in chunk for chunk in emitted)
    assert "🦙" in emitted or any("🦙" in chunk for chunk in emitted)


def test_an_unfinished_character_at_the_end_becomes_a_replacement() -> None:
    assembler = Utf8Assembler()
    assert assembler.feed("é".encode()[:1]) == ""
    assert assembler.flush() == "\ufffd"


def test_stop_string_split_over_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["STOP"])
    out = [matcher.feed(p) for p in ["Hello S", "T", "O", "P and more"]]
    assert "".join(out) == "Hello "
    assert matcher.stopped


def test_text_that_only_looks_like_a_stop_start_is_released() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("a </e") == "a "
    assert matcher.feed("xtra") == "</extra"
    assert not matcher.stopped
    assert matcher.feed("</en") == ""
    assert matcher.flush() == "</en"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    matcher = StopMatcher(["world", "lo w"])
    assert matcher.feed("hello world") == "hel"


def test_think_close_at_the_start_is_stripped_even_in_pieces() -> None:
    assert "".join(feed_all(ThinkStripper(), ["</th", "ink>", "\n\n", "Answer", " here"])) == "Answer here"
    assert "".join(feed_all(ThinkStripper(), ["  </think>Yes"])) == "Yes"


def test_think_close_later_in_the_text_is_kept() -> None:
    assert "".join(feed_all(ThinkStripper(), ["Sure", " </think> stays"])) == "Sure </think> stays"
    assert "".join(feed_all(ThinkStripper(), ["</thi"])) == "</thi"


def test_pipeline_strips_think_only_when_asked(gemma: Model) -> None:
    pieces = [gemma.piece(t) for t in gemma.tokenize("</think>\n\nHello there", add_special=False)]
    assert "".join(feed_all(TextPipeline([], strip_think=True), pieces)) == "Hello there"
    assert "".join(feed_all(TextPipeline([], strip_think=False), pieces)) == "</think>\n\nHello there"


def _is_broken_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# -- reasoning blocks


REASONING_CASES = [
    ("<think>\nweigh it\n</think>\n\nYes.", False, "weigh it", "Yes."),
    ("  <think>a</think>b", False, "a", "b"),
    ("weigh it</think>Yes.", True, "weigh it", "Yes."),  # the prompt opened the block
    ("<think>never closed", False, "never closed", ""),
    ("No block here.", False, "", "No block here."),
    ("<thin air", False, "", "<thin air"),
    ("a < b </thinking> c", True, "a < b </thinking> c", ""),
]


@pytest.mark.parametrize(("reply", "opened", "reasoning", "answer"), REASONING_CASES)
def test_reasoning_is_split_from_the_answer_however_it_arrives(
    reply: str, opened: bool, reasoning: str, answer: str
) -> None:
    for split in range(len(reply) + 1):
        splitter = ReasoningSplitter(opened)
        shown = splitter.feed(reply[:split])
        thought = splitter.take_reasoning()
        shown += splitter.feed(reply[split:])
        shown += splitter.flush()
        thought += splitter.take_reasoning()
        assert (thought, shown) == (reasoning, answer), f"split at {split}"
