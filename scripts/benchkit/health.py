"""``GET /health`` requests/s over keep-alive connections: wrk, or an asyncio client."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter

from benchkit.client import BenchHTTPError, read_body, read_head, request_bytes


def health_rps_wrk(host: str, port: int, seconds: float, conns: int) -> dict:
    cmd = [
        "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "2s",
        f"http://{host}:{port}/health",
    ]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True,
                         timeout=seconds + 30)
    text = out.stdout + out.stderr
    m = re.search(r"Requests/sec:\s*([\d.]+)", text)
    if not m:
        raise BenchHTTPError(f"wrk gave no Requests/sec:\n{text}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    sock_err = re.search(r"Socket errors:(.*)", text)
    total = re.search(r"(\d+) requests in", text)
    return {
        "rps": float(m.group(1)),
        "requests": int(total.group(1)) if total else None,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sock_err.group(1).strip() if sock_err else "",
        "tool": "wrk",
    }


async def health_rps_python(host: str, port: int, seconds: float, conns: int) -> dict:
    req = request_bytes("GET", "/health", host, port, None, keep_alive=True)
    counts: Counter = Counter()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                status, headers = await read_head(reader)
                await read_body(reader, headers)
                counts[status] += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counts["error"] += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    dt = time.perf_counter() - t0
    ok = counts.get(200, 0)
    total = sum(v for k, v in counts.items() if k != "error")
    return {
        "rps": total / dt,
        "requests": total,
        "non_2xx": total - ok,
        "socket_errors": str(counts.get("error", 0)),
        "tool": "python-asyncio",
    }
