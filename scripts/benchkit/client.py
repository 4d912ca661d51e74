"""A deliberately small HTTP/1.1 client on asyncio streams.

One new connection per completion request, chunked or close-delimited
bodies, SSE frames parsed as they arrive. Both servers get exactly the same
client code and cost.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any


class BenchHTTPError(RuntimeError):
    pass


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await reader.readline()
    if not line:
        raise ConnectionResetError("connection closed before the status line")
    parts = line.decode("latin-1").split(None, 2)
    status = int(parts[1])
    headers: dict[str, str] = {}
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def _iter_body(
    reader: asyncio.StreamReader, headers: dict[str, str]
) -> AsyncIterator[bytes]:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif "content-length" in headers:
        left = int(headers["content-length"])
        while left > 0:
            data = await reader.read(min(left, 65536))
            if not data:
                return
            left -= len(data)
            yield data
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return b"".join([c async for c in _iter_body(reader, headers)])


def request_bytes(method: str, path: str, host: str, port: int, body: bytes | None,
                   keep_alive: bool = False) -> bytes:
    head = [
        f"{method} {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: */*",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


@dataclass
class StreamResult:
    t_start: float = 0.0  # before connect
    t_first_frame: float | None = None  # first SSE data frame of any kind
    t_first_content: float | None = None  # first frame with non-empty delta.content
    t_last_content: float | None = None
    t_end: float = 0.0
    content_frames: int = 0
    text: str = ""
    finish_reason: str | None = None
    usage: dict | None = None
    timings: dict | None = None

    @property
    def ttft(self) -> float | None:
        t = self.t_first_content if self.t_first_content is not None else self.t_first_frame
        return None if t is None else t - self.t_start

    @property
    def completion_tokens(self) -> int:
        if self.usage and isinstance(self.usage.get("completion_tokens"), int):
            return self.usage["completion_tokens"]
        return self.content_frames

    @property
    def prompt_tokens(self) -> int | None:
        if self.usage and isinstance(self.usage.get("prompt_tokens"), int):
            return self.usage["prompt_tokens"]
        return None

    @property
    def gen_tps(self) -> float | None:
        n = self.completion_tokens
        if self.t_first_content is None or self.t_last_content is None or n < 2:
            return None
        dt = self.t_last_content - self.t_first_content
        return (n - 1) / dt if dt > 0 else None


async def stream_chat(host: str, port: int, payload: dict, timeout: float) -> StreamResult:
    """POST /v1/chat/completions with stream=true; time every SSE frame."""
    payload = dict(payload, stream=True, stream_options={"include_usage": True})
    body = json.dumps(payload).encode()
    res = StreamResult(t_start=time.perf_counter())

    async def run() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request_bytes("POST", "/v1/chat/completions", host, port, body))
            status, headers = await read_head(reader)
            if status != 200:
                err = await read_body(reader, headers)
                raise BenchHTTPError(f"HTTP {status}: {err[:300]!r}")
            buf = b""
            done = False
            async for chunk in _iter_body(reader, headers):
                now = time.perf_counter()
                buf += chunk
                if b"\r" in buf:
                    buf = buf.replace(b"\r\n", b"\n")
                while not done:
                    idx = buf.find(b"\n\n")
                    if idx < 0:
                        break
                    event, buf = buf[:idx], buf[idx + 2 :]
                    for line in event.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            break
                        _on_frame(res, json.loads(data), now)
                if done:
                    break
        finally:
            writer.close()
        res.t_end = time.perf_counter()

    await asyncio.wait_for(run(), timeout)
    return res


def _on_frame(res: StreamResult, obj: dict, now: float) -> None:
    if res.t_first_frame is None:
        res.t_first_frame = now
    if "error" in obj and not obj.get("choices"):
        raise BenchHTTPError(f"error frame: {obj['error']}")
    for ch in obj.get("choices") or []:
        delta = ch.get("delta") or {}
        content = delta.get("content")
        if content:
            res.content_frames += 1
            res.text += content
            if res.t_first_content is None:
                res.t_first_content = now
            res.t_last_content = now
        if ch.get("finish_reason"):
            res.finish_reason = ch["finish_reason"]
    if obj.get("usage"):
        res.usage = obj["usage"]
    if obj.get("timings"):
        res.timings = obj["timings"]


def run_async(coro_fn: Callable[[], Any]) -> Any:
    return asyncio.run(coro_fn())

