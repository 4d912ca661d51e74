"""The request head: request line, field lines and framing (RFC 9112 §3, §5, §6).

``parse_head`` turns the text of a head into a ``Head`` or raises
``ParseError``. It is a pure function of that text, and clients repeat
themselves: a health checker, or any keep-alive client, sends the same head
or at least the same lines again and again. So valid heads and lines are
memoized, bounded in number and length: a head seen before costs one dict
lookup, a line seen before one more. Invalid input is never remembered.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Final, TypeVar

from .errors import ParseError
from .message import Headers

# RFC 9110 §5.6.2 token; RFC 9110 §5.5 field-vchar (VCHAR / obs-text).
TOKEN: Final = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_FIELD_VCHAR: Final = r"[\x21-\x7e\x80-\xff]"

# RFC 9112 §3: method SP request-target SP HTTP-version, single spaces.
_REQUEST_LINE: Final = re.compile(rf"({TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9112 §5: field-name ":" OWS field-value OWS. No whitespace before the
# colon (§5.1); no obs-fold (§5.2: a line starting with SP/HTAB has no
# token); no CR, LF, NUL or other control in the value (RFC 9110 §5.5).
_FIELD_LINE: Final = re.compile(
    rf"({TOKEN}):[ \t]*((?:{_FIELD_VCHAR}+(?:[ \t]+{_FIELD_VCHAR}+)*)?)[ \t]*"
)
# RFC 9112 §3.2.2: scheme "://" authority, then the path and query we route on.
_ABSOLUTE_FORM: Final = re.compile(r"(?i:https?)://[^/?]*(/[^?]*)?(?:\?(.*))?")
# More decimal digits than this cannot be under any sane body limit.
MAX_LENGTH_DIGITS: Final = 15

# The fields that decide how the body is framed and whether the connection
# persists; the parser interprets these, handlers read the rest.
_FRAMING_NAMES: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "expect"}
)


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed request head. Immutable, so one memoized Head serves many requests."""

    method: str
    target: str
    path: str
    query: str
    headers: Headers
    http_version: str
    keep_alive: bool
    content_length: int | None
    """Body length in bytes; None when the body is chunked."""
    expects_continue: bool


RequestLine = tuple[str, str, str, str, str]
Field = tuple[str, str]
_Parsed = TypeVar("_Parsed", Head, RequestLine, Field)

_MEMO_ENTRIES: Final = 1024
_MEMO_CHARS: Final = 1024
_heads: dict[str, Head] = {}
_request_lines: dict[str, RequestLine] = {}
_field_lines: dict[str, Field] = {}


def parse_head(text: str) -> Head:
    """Parse a head: the text up to, not including, the blank line that ends it."""
    head = _heads.get(text)
    if head is not None:
        return head
    request_line, _, section = text.partition("\r\n")
    method, target, path, query, http_version = _parse_request_line(request_line)
    fields: list[Field] = []
    content_lengths: list[str] = []
    transfer_codings: list[str] = []
    connection_options: list[str] = []
    expects_continue = False
    host_count = 0
    for line in section.split("\r\n") if section else ():
        field = _field_lines.get(line) or _parse_field_line(line)
        fields.append(field)
        name, value = field
        if name not in _FRAMING_NAMES:
            continue
        if name == "host":
            host_count += 1
        elif name == "content-length":
            content_lengths.append(value)
        elif name == "transfer-encoding":
            transfer_codings.append(value)
        elif name == "connection":
            connection_options += list_items(value)
        else:  # expect; RFC 9110 §10.1.1: an HTTP/1.0 client cannot expect 100
            expects_continue = value.lower() == "100-continue" and http_version == "1.1"
    # RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
    if host_count != 1 and http_version == "1.1":
        raise ParseError(400, "an HTTP/1.1 request needs exactly one Host header")
    # RFC 9112 §9.3: 1.1 is persistent unless "close"; 1.0 only on request.
    keep_alive = "close" not in connection_options and (
        http_version == "1.1" or "keep-alive" in connection_options
    )
    content_length: int | None = 0
    if transfer_codings:
        _check_transfer_codings(transfer_codings, bool(content_lengths), http_version)
        content_length = None
    elif content_lengths:
        content_length = _parse_content_length(content_lengths)
    head = Head(method, target, path, query, Headers(fields), http_version, keep_alive,
                content_length, expects_continue)
    return _remember(_heads, text, head)


def check_field_lines(text: str) -> None:
    """Validate a section of field lines (a chunked body's trailers); raise ParseError."""
    for line in text.split("\r\n"):
        if line not in _field_lines:
            _parse_field_line(line)


def list_items(value: str) -> list[str]:
    """Lowercased members of a comma-separated list field (RFC 9110 §5.6.1)."""
    return [item.strip(" \t").lower() for item in value.split(",")]


def _parse_request_line(line: str) -> RequestLine:
    known = _request_lines.get(line)
    if known is not None:
        return known
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        raise ParseError(400, "malformed request line")
    method, target, major, minor = match.groups()
    if major != "1":
        raise ParseError(505, f"HTTP version {major}.{minor} is not supported")
    # RFC 9110 §2.5: a higher minor version is handled as the highest minor
    # version we implement.
    http_version = "1.0" if minor == "0" else "1.1"
    path, query = _split_target(method, target)
    return _remember(_request_lines, line, (method, target, path, query, http_version))


def _parse_field_line(line: str) -> Field:
    match = _FIELD_LINE.fullmatch(line)
    if match is None:
        raise ParseError(400, _describe_bad_field(line))
    # Interned names make the _FRAMING_NAMES lookup and later comparisons cheap.
    field = (sys.intern(match.group(1).lower()), match.group(2))
    return _remember(_field_lines, line, field)


def _remember(memo: dict[str, _Parsed], text: str, parsed: _Parsed) -> _Parsed:
    if len(text) <= _MEMO_CHARS:
        if len(memo) >= _MEMO_ENTRIES:
            memo.clear()  # crude but bounded; a steady client refills it at once
        memo[text] = parsed
    return parsed


def _split_target(method: str, target: str) -> tuple[str, str]:
    """Split a request-target into (path, query), per its form (RFC 9112 §3.2)."""
    if target[0] == "/":  # origin-form, what every client sends to a server
        path, _, query = target.partition("?")
        return path, query
    if target == "*" and method == "OPTIONS":  # asterisk-form
        return "*", ""
    absolute = _ABSOLUTE_FORM.fullmatch(target)
    if absolute is not None:  # absolute-form, which a server MUST accept
        return absolute.group(1) or "/", absolute.group(2) or ""
    raise ParseError(400, "malformed request target")


def _parse_content_length(values: list[str]) -> int:
    """The one length all Content-Length values agree on (RFC 9110 §8.6)."""
    distinct: set[str] = set()
    for value in values:
        for item in value.split(","):
            item = item.strip(" \t")
            if not (item.isascii() and item.isdigit()):
                raise ParseError(400, "invalid Content-Length")
            distinct.add(item.lstrip("0") or "0")
    # Two different lengths make the framing ambiguous: the classic request
    # smuggling vector (RFC 9112 §6.3 item 5 says the message is invalid).
    if len(distinct) != 1:
        raise ParseError(400, "conflicting Content-Length values")
    digits = distinct.pop()
    if len(digits) > MAX_LENGTH_DIGITS:
        raise ParseError(413, "request body too large")
    return int(digits)


def _check_transfer_codings(values: list[str], has_length: bool, http_version: str) -> None:
    """Accept exactly ``chunked``, refusing framings a proxy could read differently."""
    # RFC 9112 §6.1: both headers present is a smuggling attempt (or a broken
    # client); an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    if has_length:
        raise ParseError(400, "both Content-Length and Transfer-Encoding are present")
    if http_version == "1.0":
        raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
    codings = [item for value in values for item in list_items(value) if item]
    # RFC 9112 §6.3 item 4: chunked must be the final coding, applied once.
    if not codings or codings[-1] != "chunked" or codings.count("chunked") > 1:
        raise ParseError(400, "invalid Transfer-Encoding")
    if len(codings) > 1:
        # RFC 9112 §6.1: a coding we do not understand gets 501.
        raise ParseError(501, f"unsupported transfer coding {codings[0]!r}")


def _describe_bad_field(line: str) -> str:
    """Name what is wrong with an invalid field line, for the 400's message."""
    if line[:1] in (" ", "\t"):
        return "malformed header: obsolete line folding (RFC 9112 §5.2)"
    name, colon, _ = line.partition(":")
    if "\r" in line or "\n" in line:
        return "malformed header: bare CR or LF"
    if not colon:
        return "malformed header: line without a colon"
    if name != name.rstrip(" \t"):
        return "malformed header: whitespace before the colon (RFC 9112 §5.1)"
    if re.fullmatch(TOKEN, name) is None:
        return "malformed header: invalid field name"
    return "malformed header: invalid character in field value"
