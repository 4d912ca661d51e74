"""What a parsed request looks like to a handler: a Request and its Headers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


class Headers:
    """A read-only, case-insensitive view of a request's header fields.

    Field names are case-insensitive (RFC 9110 §5.1), so they are stored
    lowercased; values keep their bytes (decoded as ISO-8859-1, which maps
    each byte to one character, RFC 9110 §5.5) with surrounding whitespace
    removed. Repeated fields keep their order (RFC 9110 §5.3).
    """

    __slots__ = ("_fields",)

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        # The parser hands over its list; names must already be lowercase.
        self._fields = fields

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name``, or ``default`` when the field is absent."""
        key = name.lower()
        for field_name, value in self._fields:
            if field_name == key:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in the order received."""
        key = name.lower()
        return [value for field_name, value in self._fields if field_name == key]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return any(field_name == key for field_name, _ in self._fields)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """Yield ``(lowercase name, value)`` pairs in the order received."""
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._fields == other._fields

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"


@dataclass(slots=True)
class Request:
    """One complete HTTP request, body included; treat it as read-only.

    ``target`` is the request-target as sent; ``path`` is its path (the
    origin-form up to ``?``, RFC 9112 §3.2.1) and ``query`` what follows the
    ``?``, both still percent-encoded. ``keep_alive`` says whether the
    connection may carry another request after this one (RFC 9112 §9.3).

    Not frozen, unlike our other records: one is built per request on the
    hot path, and a frozen dataclass's ``__init__`` (an ``object.__setattr__``
    call per field) costs five times as much.
    """

    method: str
    target: str
    path: str
    query: str
    headers: Headers
    body: bytes
    http_version: str
    keep_alive: bool
    # The `{name}` segments of the route template that matched (http/router.py); None for exact paths.
    path_params: dict[str, str] | None = None
