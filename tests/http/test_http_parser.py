"""Tier 1: the sans-IO parser, in memory.

Every sample is fed three ways (whole, one byte at a time, and followed by a
pipelined second request) and must give the same events each way.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from igllama.http import Request
from igllama.http.errors import ParseError
from igllama.http.parser import IDLE, NEED_DATA, Event, HeadReceived, NeedData, RequestParser

SECOND = b"GET /second?n=2 HTTP/1.1\r\nHost: example.com\r\n\r\n"


def events_of(parser: RequestParser, chunks: list[bytes]) -> list[Event]:
    """Feed the chunks one after another, pulling every event each one allows."""
    events: list[Event] = []
    for chunk in chunks:
        parser.feed(chunk)
        while not isinstance(event := parser.next_event(), NeedData):
            events.append(event)
    return events


def split(raw: bytes, mode: str) -> list[bytes]:
    if mode == "bytewise":
        return [raw[i : i + 1] for i in range(len(raw))]
    if mode == "pipelined":
        return [raw + SECOND]
    return [raw]


Feed = Callable[..., list[Event]]


@pytest.fixture(params=["whole", "bytewise", "pipelined"])
def feed(request: pytest.FixtureRequest) -> Feed:
    """Parse a sample the way the parameter says; a pipelined SECOND must follow intact."""
    mode = request.param

    def parse(raw: bytes, **limits: int) -> list[Event]:
        events = events_of(RequestParser(**limits), split(raw, mode))
        if mode == "pipelined":
            second = events.pop()
            assert isinstance(second, Request)
            assert (second.method, second.path, second.query) == ("GET", "/second", "n=2")
        return events

    return parse


@pytest.fixture(params=["whole", "bytewise"])
def refuse(request: pytest.FixtureRequest) -> Callable[..., ParseError]:
    """Feed a sample that must be refused; return the error the parser raised."""
    mode = request.param

    def parse(raw: bytes, **limits: int) -> ParseError:
        parser = RequestParser(**limits)
        with pytest.raises(ParseError) as caught:
            events_of(parser, split(raw, mode))
        # The parser is dead afterwards: the framing of what follows is unknown.
        with pytest.raises(ParseError):
            parser.next_event()
        return caught.value

    return parse


def only_request(events: list[Event]) -> Request:
    requests = [event for event in events if isinstance(event, Request)]
    assert len(requests) == 1
    return requests[0]


# -- valid requests -----------------------------------------------------------


def test_get_with_query_and_case_insensitive_repeated_headers(feed: Feed) -> None:
    raw = (
        b"GET /v1/models?limit=5&x=%20 HTTP/1.1\r\n"
        b"Host: localhost:8080\r\n"
        b"X-Tag: one\r\n"
        b"accept:   application/json  \r\n"
        b"x-tag: two\r\n\r\n"
    )
    [request] = feed(raw)
    assert isinstance(request, Request)
    assert (request.method, request.target) == ("GET", "/v1/models?limit=5&x=%20")
    assert (request.path, request.query) == ("/v1/models", "limit=5&x=%20")
    assert request.http_version == "1.1" and request.keep_alive and request.body == b""
    assert request.headers.get("ACCEPT") == "application/json"
    assert request.headers.get("X-TAG") == "one"
    assert request.headers.get_all("x-tag") == ["one", "two"]
    assert request.headers.get("missing") is None


def test_post_with_content_length(feed: Feed) -> None:
    body = b'{"model":"m","messages":[]}'
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    head, request = feed(raw)
    assert head == HeadReceived("POST", "/v1/chat/completions", False, len(body))
    assert isinstance(request, Request) and request.body == body


def test_expect_100_continue_is_announced_before_the_body(feed: Feed) -> None:
    raw = b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc"
    head, request = feed(raw)
    assert isinstance(head, HeadReceived) and head.expects_continue
    assert isinstance(request, Request) and request.body == b"abc"


def test_chunked_body_with_extensions_and_trailers(feed: Feed) -> None:
    raw = (
        b"POST /upload HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value;quoted=\"a b\"\r\nhello\r\n"
        b"7 ; ext\r\n, world\r\n"
        b"A\r\n0123456789\r\n"
        b"0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
    )
    head, request = feed(raw)
    assert isinstance(head, HeadReceived) and head.content_length is None
    assert isinstance(request, Request) and request.body == b"hello, world0123456789"


def test_chunked_body_without_trailers(feed: Feed) -> None:
    raw = b"POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    assert only_request(feed(raw)).body == b"abc"


def test_http_1_0_closes_unless_keep_alive_is_asked(feed: Feed) -> None:
    [plain] = feed(b"GET /health HTTP/1.0\r\n\r\n")
    assert isinstance(plain, Request)
    assert plain.http_version == "1.0" and not plain.keep_alive
    [kept] = feed(b"GET /health HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
    assert isinstance(kept, Request) and kept.keep_alive


def test_connection_close_ends_a_1_1_connection(feed: Feed) -> None:
    [request] = feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, close\r\n\r\n")
    assert isinstance(request, Request) and not request.keep_alive


def test_empty_lines_before_the_request_line_are_ignored(feed: Feed) -> None:
    [request] = feed(b"\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(request, Request) and request.path == "/a"


def test_identical_content_lengths_are_accepted(feed: Feed) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2, 02\r\n\r\nok"
    assert only_request(feed(raw)).body == b"ok"


def test_absolute_form_target_routes_on_its_path(feed: Feed) -> None:
    [request] = feed(b"GET http://example.com:80/v1/models?a=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(request, Request)
    assert (request.path, request.query) == ("/v1/models", "a=1")


def test_higher_minor_version_is_served_as_1_1(feed: Feed) -> None:
    [request] = feed(b"GET / HTTP/1.7\r\nHost: h\r\n\r\n")
    assert isinstance(request, Request) and request.http_version == "1.1"


def test_obs_text_in_a_value_is_kept_byte_for_byte(feed: Feed) -> None:
    [request] = feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xe9 \t au lait\r\n\r\n")
    assert isinstance(request, Request)
    assert request.headers.get("x-name") == b"caf\xe9 \t au lait".decode("latin-1")


# -- limits ---------------------------------------------------------------------


def test_head_over_the_limit_is_431(refuse: Callable[..., ParseError]) -> None:
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 600 + b"\r\n\r\n"
    assert refuse(raw, max_head_bytes=512).status == 431


def test_endless_head_is_431_before_it_ends(refuse: Callable[..., ParseError]) -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"X-Filler: abcdefgh\r\n" * 40
    assert refuse(raw, max_head_bytes=512).status == 431


def test_head_at_exactly_the_limit_is_accepted() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: "
    raw = head + b"a" * (512 - len(head) - 4) + b"\r\n\r\n"
    assert len(raw) == 512
    assert isinstance(only_request(events_of(RequestParser(max_head_bytes=512), [raw])), Request)


def test_content_length_over_the_body_limit_is_413_before_the_body(
    refuse: Callable[..., ParseError],
) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n"
    assert refuse(raw, max_body_bytes=1000).status == 413


def test_absurd_content_length_is_413(refuse: Callable[..., ParseError]) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n"
    assert refuse(raw).status == 413


def test_chunks_adding_up_over_the_body_limit_are_413(refuse: Callable[..., ParseError]) -> None:
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"100\r\n" + b"x" * 256 + b"\r\n"
        + b"100\r\n" + b"x" * 256 + b"\r\n0\r\n\r\n"
    )
    assert refuse(raw, max_body_bytes=500).status == 413


def test_huge_chunk_size_is_413(refuse: Callable[..., ParseError]) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 40 + b"\r\n"
    assert refuse(raw).status == 413


def test_trailers_over_the_head_limit_are_431(refuse: Callable[..., ParseError]) -> None:
    raw = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"X-Trailer: abcdefgh\r\n" * 40 + b"\r\n"
    )
    assert refuse(raw, max_head_bytes=512).status == 431


# -- malformed input --------------------------------------------------------------


@pytest.mark.parametrize(
    "request_line",
    [
        b"GET /",
        b"GET  / HTTP/1.1",
        b"GET / HTTP/1.1 ",
        b"GET / http/1.1",
        b"GET / HTTP/1",
        b"G(T / HTTP/1.1",
        b"GET /a b HTTP/1.1",
        b"GET \xff HTTP/1.1",
        b"GET relative/path HTTP/1.1",
    ],
)
def test_malformed_request_line_is_400(
    refuse: Callable[..., ParseError], request_line: bytes
) -> None:
    error = refuse(request_line + b"\r\nHost: h\r\n\r\n")
    assert error.status == 400 and "request" in error.message


@pytest.mark.parametrize(
    ("field", "complaint"),
    [
        (b"Host : h", "whitespace before the colon"),
        (b"X-A: 1\r\n  folded", "obsolete line folding"),
        (b"No colon here", "without a colon"),
        (b"X-A: a\rb", "bare CR or LF"),
        (b"X-A: a\nb", "bare CR or LF"),
        (b"X-A: a\x00b", "invalid character"),
        (b"X-A: a\x7fb", "invalid character"),
        (b"X(A): 1", "invalid field name"),
        (b": empty name", "invalid field name"),
    ],
)
def test_malformed_header_is_400_with_the_reason(
    refuse: Callable[..., ParseError], field: bytes, complaint: str
) -> None:
    error = refuse(b"GET / HTTP/1.1\r\nHost: h\r\n" + field + b"\r\n\r\n")
    assert error.status == 400 and complaint in error.message


def test_bare_lf_line_endings_are_400_without_waiting(refuse: Callable[..., ParseError]) -> None:
    assert refuse(b"GET / HTTP/1.1\nHost: h\n\n").status == 400


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5;=x\r\nhello\r\n0\r\n\r\n",
        b"5;a=\"unterminated\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5" + b";a=b" * 2000 + b"\r\nhello\r\n0\r\n\r\n",
        b"0\r\nBad Trailer: x\r\n\r\n",
    ],
)
def test_malformed_chunk_is_400(refuse: Callable[..., ParseError], chunks: bytes) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    assert refuse(raw).status == 400


@pytest.mark.parametrize(
    "value", [b"", b"-1", b"+5", b"0x10", b"5 5", b"5,", b"\xb2", b"five"]
)
def test_invalid_content_length_is_400(refuse: Callable[..., ParseError], value: bytes) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: " + value + b"\r\n\r\n"
    assert refuse(raw).status == 400


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9", b"HTTP/3.1"])
def test_unknown_http_version_is_505(refuse: Callable[..., ParseError], version: bytes) -> None:
    assert refuse(b"GET / " + version + b"\r\nHost: h\r\n\r\n").status == 505


@pytest.mark.parametrize(
    "host_fields", [b"", b"Host: a\r\nHost: b\r\n"], ids=["missing", "twice"]
)
def test_http_1_1_needs_exactly_one_host(
    refuse: Callable[..., ParseError], host_fields: bytes
) -> None:
    assert refuse(b"GET / HTTP/1.1\r\n" + host_fields + b"\r\n").status == 400


# -- request smuggling ------------------------------------------------------------------


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: 5, 6\r\n",
        b"Transfer-Encoding: chunked, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked, gzip\r\n",
        b"Transfer-Encoding: xchunked\r\n",
        b"Transfer-Encoding:\r\n",
    ],
)
def test_ambiguous_framing_is_400(refuse: Callable[..., ParseError], framing: bytes) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    assert refuse(raw).status == 400


def test_transfer_encoding_in_http_1_0_is_400(refuse: Callable[..., ParseError]) -> None:
    raw = b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert refuse(raw).status == 400


def test_unsupported_transfer_coding_is_501(refuse: Callable[..., ParseError]) -> None:
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    assert refuse(raw).status == 501


def test_smuggled_request_in_a_body_stays_body() -> None:
    inner = b"GET /admin HTTP/1.1\r\nHost: h\r\n\r\n"
    raw = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s" % (len(inner), inner)
    events = events_of(RequestParser(), [raw])
    assert [event.path for event in events if isinstance(event, Request)] == ["/a"]
    assert only_request(events).body == inner


# -- the parser's own bookkeeping ---------------------------------------------------------


def test_buffered_bytes_and_idleness_are_reported() -> None:
    parser = RequestParser()
    assert parser.idle and parser.next_event() is IDLE
    parser.feed(b"\r\n")  # an empty line before a request is not a request yet
    assert parser.next_event() is IDLE and parser.idle
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert parser.next_event() is NEED_DATA
    assert not parser.idle and parser.buffered == 18 and not parser.in_body
    parser.feed(b"st: h\r\nContent-Length: 4\r\n\r\nab")
    assert isinstance(parser.next_event(), HeadReceived)
    assert parser.next_event() is NEED_DATA and parser.in_body
    parser.feed(b"cd")
    assert isinstance(parser.next_event(), Request)
    assert parser.idle and parser.next_event() is IDLE


def test_a_repeated_head_gives_equal_requests() -> None:
    # Heads are memoized; a second identical head must not share mutable state.
    raw = b"GET /a?b HTTP/1.1\r\nHost: h\r\nX: 1\r\n\r\n"
    first, second = events_of(RequestParser(), [raw, raw])
    assert isinstance(first, Request) and isinstance(second, Request)
    assert first == second and first is not second
