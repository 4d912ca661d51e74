"""Measure GET /health requests per second over keep-alive connections.

    python scripts/bench_http.py                      # igllama.http server in a subprocess
    python scripts/bench_http.py --naive              # and a bare uvloop protocol, for scale
    python scripts/bench_http.py --url http://127.0.0.1:8080/health   # and a running server
    python scripts/bench_http.py --no-igllama --url URL               # only a running server

The load comes from wrk when it is installed (``--client python`` forces
the fallback), else from a Python client: asyncio on raw sockets, several
keep-alive connections, one request in flight on each. Servers run in
their own processes, so client and server never share an event loop. Runs
alternate between servers, so load from other processes on the machine
falls on each alike, and the median of ``--runs`` runs is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
HEALTH_BODY = b'{"status":"ok","model":"loaded"}'


# -- the servers under test (each runs as `bench_http.py --serve KIND`) -------

def serve_igllama() -> int:
    sys.path.insert(0, str(REPO))
    from igllama.http import Request, Response, Router, serve

    health = Response(200, HEALTH_BODY)

    def get_health(request: Request) -> Response:
        # The kind of handler the real app uses: sync, so it runs inline.
        return health

    router = Router()
    router.add("GET", "/health", get_health)
    return serve(router, "127.0.0.1", 0, on_started=lambda server: announce(server.port))


def serve_naive() -> int:
    """A bare uvloop protocol answering every head alike: a ceiling for Python."""
    import uvloop

    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(HEALTH_BODY), HEALTH_BODY)
    )

    class Naive(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                self.buffer = self.buffer[end + 4:]
                self.transport.write(response)  # type: ignore[attr-defined]

    async def run() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Naive, "127.0.0.1", 0, backlog=2048)
        announce(server.sockets[0].getsockname()[1])
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()
        return 0

    return uvloop.run(run())


def announce(port: int) -> None:
    print(f"PORT {port}", flush=True)


def start_server(kind: str) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    line = process.stdout.readline() if process.stdout else ""
    match = re.fullmatch(r"PORT (\d+)\n", line)
    if match is None:
        process.kill()
        raise SystemExit(f"the {kind} server did not start (it said {line!r})")
    return process, f"http://127.0.0.1:{match.group(1)}/health"


def stop_server(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


# -- the clients -----------------------------------------------------------------

def run_wrk(url: str, args: argparse.Namespace) -> tuple[float, int]:
    """(requests per second, requests completed) by wrk."""
    out = subprocess.run(
        ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", url],
        capture_output=True, text=True, check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: \d+|Socket errors: .*", out)
    if errors:
        print(f"  wrk reported: {errors.group(0)}", file=sys.stderr)
    return float(rate.group(1)), int(total.group(1))


def run_python(url: str, args: argparse.Namespace) -> tuple[float, int]:
    """(requests per second, requests completed) by an asyncio client."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()

    async def one_connection(deadline: float) -> int:
        reader, writer = await asyncio.open_connection(host, port)
        done = 0
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected response: {head[:80]!r}")
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            done += 1
        writer.close()
        return done

    async def run() -> tuple[float, int]:
        started = time.perf_counter()
        deadline = started + args.duration
        counts = await asyncio.gather(*(one_connection(deadline) for _ in range(args.connections)))
        return sum(counts) / (time.perf_counter() - started), sum(counts)

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run())
    return uvloop.run(run())


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time a process has used (Linux /proc), else None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(servers: dict[str, tuple[str, int | None]], args: argparse.Namespace) -> None:
    """Print each server's median req/s, its runs interleaved with the others'.

    Also the server's CPU time per request, read from /proc: on a machine
    shared with other work it varies far less than requests per second.
    """
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    client = run_wrk if use_wrk else run_python
    label = "wrk" if use_wrk else "python client"
    rates: dict[str, list[float]] = {name: [] for name in servers}
    costs: dict[str, list[float]] = {name: [] for name in servers}
    for run in range(args.runs):
        for name, (url, pid) in servers.items():
            cpu_before = cpu_seconds(pid)
            rate, total = client(url, args)
            cpu_after = cpu_seconds(pid)
            rates[name].append(rate)
            note = ""
            if cpu_before is not None and cpu_after is not None and total:
                costs[name].append((cpu_after - cpu_before) / total * 1e6)
                note = f", server CPU {costs[name][-1]:.1f} us/request"
            print(f"  {name} run {run + 1}: {rate:,.0f} req/s{note}", file=sys.stderr)
    for name in servers:
        cost = ""
        if costs[name]:
            cost = f", server CPU {statistics.median(costs[name]):.1f} us/request"
        print(f"{name}: median {statistics.median(rates[name]):,.0f} req/s{cost} over "
              f"{args.runs} runs ({label}, {args.connections} connections, {args.duration} s each)")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--url", action="append", default=[],
                        help="also measure this running server (repeatable)")
    parser.add_argument("--naive", action="store_true",
                        help="also measure a bare uvloop protocol, as a baseline")
    parser.add_argument("--no-igllama", action="store_true",
                        help="do not start the igllama.http server")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--serve", choices=("igllama", "naive"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve == "igllama":
        return serve_igllama()
    if args.serve == "naive":
        return serve_naive()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", file=sys.stderr)
    kinds = [kind for kind, wanted in (("igllama", not args.no_igllama), ("naive", args.naive))
             if wanted]
    if not kinds and not args.url:
        parser.error("nothing to measure")
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    try:
        for kind in kinds:
            servers[kind] = start_server(kind)
        targets: dict[str, tuple[str, int | None]] = {
            kind: (url, process.pid) for kind, (process, url) in servers.items()
        }
        targets.update((url, (url, None)) for url in args.url)
        measure(targets, args)
    finally:
        for process, _ in servers.values():
            stop_server(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
