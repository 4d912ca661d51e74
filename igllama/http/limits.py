"""Every input the server accepts has a limit; they are all here."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes (bytes) and times (seconds) that bound what one client can cost us.

    Each limit breaks with its own status: ``max_head_bytes`` with 431
    (RFC 6585 §5), ``max_body_bytes`` with 413 (RFC 9110 §15.5.14),
    ``head_timeout`` and ``body_timeout`` with 408 (RFC 9110 §15.5.9).
    """

    max_head_bytes: int = 16 * 1024
    """Request line plus header section (and a chunked body's trailers)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Decoded request body, by Content-Length or summed chunk sizes."""
    head_timeout: float = 10.0
    """From the connection (or the first byte of a request) to its complete head."""
    body_timeout: float = 60.0
    """From the complete head to the complete body."""
    keepalive_timeout: float = 5.0
    """How long an idle persistent connection is kept open between requests."""
    shutdown_grace: float = 10.0
    """How long in-flight responses may run on after a stop signal."""
    read_high_water: int = 256 * 1024
    """Unprocessed input above which reading pauses while a response is in flight."""
    write_high_water: int = 64 * 1024
    """Unsent output above which the transport asks a streaming writer to wait."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not value > 0:
                raise ValueError(f"Limits.{field.name} must be positive, not {value!r}")
