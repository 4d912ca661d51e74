#!/usr/bin/env python3
"""The load half of scripts/scale-out.sh: drive igllama replicas through nginx and check the recipe.

scale-out.sh starts the replicas and nginx (deploy/nginx.conf); this script
sends the traffic and judges it, in three phases:

1. Probe: GET /health through nginx with 40 session ids, each twice. The
   `X-Upstream` header (nginx's `$upstream_addr`) says which replica answered:
   every id must land on the same replica both times, and the ids must spread
   over every replica. Three ids per replica (the first ones the probe saw
   there) name the conversations of phase 2, so that both replicas serve some.
2. Affinity: those conversations run at once, each with its `X-Session-Id`,
   three streamed turns each (a turn's messages: the previous ones, the
   assistant's reply, a new question). Every turn must come from the
   replica the probe predicted, and every later turn must have found the
   conversation in that replica's prefix cache: `usage.prompt_tokens_details
   .cached_tokens` at least the previous turn's whole prompt. For contrast,
   each conversation's last turn is then sent straight to the other replica,
   whose cache never saw it.
3. Failover: streamed requests without a session id, a few at a time
   (least_conn). Once some have completed and a stream is running on the
   last replica, that replica gets SIGTERM: its streams in flight must finish,
   and the requests that follow must be moved by nginx to a replica still up
   (the refused connection, or a 503, never reaches the client).

Every chat request must end with 200, a finish_reason, a usage chunk and
`data: [DONE]`. The exit status is 0 only when none was lost and affinity
held; a short summary says what was measured either way.

Usage (scale-out.sh runs it; standalone against a running setup)::

    .venv/bin/python scripts/scale_out.py --nginx 127.0.0.1:8080 \\
        --replica 127.0.0.1:8081 --replica 127.0.0.1:8082=PID --access-log /tmp/igllama-nginx/access.log

The last replica is the one stopped in phase 3; give its process id after
`=`. Stdlib only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUEST_TIMEOUT = 120.0  # seconds per request: the machine's cores may be shared
STARTUP_TIMEOUT = 120.0
PROBE_IDS = 40
CONVERSATIONS_PER_REPLICA = 3
TURNS = 3
FAILOVER_REQUESTS = 24
FAILOVER_CONCURRENCY = 4
KILL_AFTER_COMPLETED = 6  # the failover phase's requests completed before the SIGTERM
MAX_TOKENS = 24
WORDS = (
    "river", "stone", "lantern", "copper", "meadow", "signal", "harbor", "winter", "garden", "engine",
    "paper", "orbit", "violet", "canyon", "ladder", "thunder", "silver", "market", "pocket", "island",
)


@dataclass
class Result:
    """One request through nginx as the client saw it."""

    label: str
    status: int | None = None
    upstream: str = ""  # X-Upstream: "a" or, after nginx moved the request, "a, b"
    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    timings: dict[str, Any] | None = None
    done: bool = False  # `data: [DONE]` arrived
    problem: str = ""
    started: float = 0.0
    first_frame: float | None = None
    ended: float | None = None

    @property
    def replica(self) -> str:
        """The replica that answered (the last one nginx tried)."""
        return self.upstream.rsplit(",", 1)[-1].strip()

    @property
    def moved(self) -> bool:
        return "," in self.upstream

    @property
    def cached_tokens(self) -> int:
        return int(((self.usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    @property
    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens", 0))

    @property
    def complete(self) -> bool:
        return (self.status == 200 and self.done and self.finish_reason is not None
                and self.usage is not None and not self.problem)

    def describe(self) -> str:
        return (f"{self.label}: status {self.status}, upstream {self.upstream or '-'}, "
                f"finish {self.finish_reason}, usage {'yes' if self.usage else 'no'}, "
                f"[DONE] {'yes' if self.done else 'no'}{', ' + self.problem if self.problem else ''}")


def hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def health(address: str, session_id: str | None = None) -> tuple[int | None, str]:
    """GET /health: the status (None when unreachable) and X-Upstream."""
    connection = http.client.HTTPConnection(*hostport(address), timeout=5)
    try:
        connection.request("GET", "/health", headers={"X-Session-Id": session_id} if session_id else {})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("X-Upstream", "")
    except OSError:
        return None, ""
    finally:
        connection.close()


def wait_ready(addresses: list[str]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for address in addresses:
        while health(address)[0] != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"scale-out: {address} did not answer GET /health with 200")
            time.sleep(0.2)


def stream_chat(address: str, label: str, messages: list[dict[str, str]], session_id: str | None,
                max_tokens: int = MAX_TOKENS, on_frame: Callable[[Result], None] | None = None) -> Result:
    """One streamed chat completion with usage; the result says everything the client saw."""
    result = Result(label, started=time.monotonic())
    body = json.dumps({
        "messages": messages, "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": max_tokens, "temperature": 0,
    })
    headers = {"Content-Type": "application/json"}
    if session_id:
        headers["X-Session-Id"] = session_id
    connection = http.client.HTTPConnection(*hostport(address), timeout=REQUEST_TIMEOUT)
    try:
        connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        response = connection.getresponse()
        result.status = response.status
        result.upstream = response.getheader("X-Upstream", "")
        if response.status != 200:
            result.problem = response.read().decode(errors="replace")[:200]
            return result
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                result.done = True
                continue
            frame = json.loads(data)
            if "error" in frame:
                result.problem = f"error frame {frame['error']}"
                continue
            if result.first_frame is None:
                result.first_frame = time.monotonic()
                if on_frame is not None:
                    on_frame(result)
            if frame.get("usage"):
                result.usage, result.timings = frame["usage"], frame.get("timings")
            for choice in frame.get("choices", []):
                result.text += choice.get("delta", {}).get("content") or ""
                result.finish_reason = choice.get("finish_reason") or result.finish_reason
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result.problem = f"{type(exc).__name__}: {exc}"
    finally:
        result.ended = time.monotonic()
        connection.close()
    return result


def notes(rng: random.Random, n_words: int) -> str:
    sentences = []
    while n_words > 0:
        length = min(n_words, rng.randint(6, 12))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(length)).capitalize() + ".")
        n_words -= length
    return " ".join(sentences)


# -- phase 1: the hash spreads session ids and keeps each on one replica

def probe(nginx: str, replicas: list[str]) -> tuple[dict[str, str], list[str]]:
    """Session id -> replica, for the ids that behaved; and what went wrong."""
    where: dict[str, str] = {}
    problems = []
    for i in range(PROBE_IDS):
        session_id = f"session-{i:02d}"
        answers = [health(nginx, session_id) for _ in range(2)]
        upstreams = {upstream for _, upstream in answers}
        if any(status != 200 for status, _ in answers) or len(upstreams) != 1 or "" in upstreams:
            problems.append(f"{session_id}: {answers}")
            continue
        where[session_id] = upstreams.pop()
    spread = Counter(where.values())
    if set(spread) != set(replicas):
        problems.append(f"session ids did not spread over every replica: {dict(spread)}")
    return where, problems


# -- phase 2: conversations return to the replica that holds their cache

@dataclass
class Conversation:
    session_id: str
    replica: str  # where the probe says its session id goes
    turns: list[Result] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)


def converse(nginx: str, conversation: Conversation, seed: int) -> None:
    rng = random.Random(seed)
    questions = [
        f"Here are my notes:\n{notes(rng, 110)}\nWhich word comes up most often?",
        f"Now add this:\n{notes(rng, 25)}\nDoes that change your answer?",
        "Summarise everything in one sentence.",
    ]
    for turn, question in enumerate(questions[:TURNS], 1):
        conversation.messages.append({"role": "user", "content": question})
        result = stream_chat(nginx, f"{conversation.session_id} turn {turn}", list(conversation.messages),
                             conversation.session_id)
        conversation.turns.append(result)
        if not result.complete:
            return
        conversation.messages.append({"role": "assistant", "content": result.text})


def affinity_problems(conversations: list[Conversation]) -> list[str]:
    problems = []
    for conversation in conversations:
        for turn, result in enumerate(conversation.turns):
            if not result.complete:
                problems.append(f"lost: {result.describe()}")
            elif result.upstream != conversation.replica:
                problems.append(f"{result.label} went to {result.upstream}, not {conversation.replica}")
            elif turn > 0 and result.cached_tokens < conversation.turns[turn - 1].prompt_tokens:
                previous = conversation.turns[turn - 1].prompt_tokens
                problems.append(f"{result.label}: {result.cached_tokens} cached tokens, "
                                f"fewer than the previous turn's {previous}-token prompt")
        if len(conversation.turns) != TURNS:
            problems.append(f"{conversation.session_id}: {len(conversation.turns)} of {TURNS} turns")
    return problems


def elsewhere(conversations: list[Conversation], replicas: list[str]) -> list[Result]:
    """Each conversation's last turn sent straight to a replica it never used (1 token)."""
    results = []
    for conversation in conversations:
        other = next(replica for replica in replicas if replica != conversation.replica)
        last_turn = conversation.messages[:-1] if conversation.messages[-1]["role"] == "assistant" \
            else conversation.messages
        results.append(stream_chat(other, f"{conversation.session_id} elsewhere", last_turn, None, max_tokens=1))
    return results


# -- phase 3: a replica stops mid-run and nothing is lost

@dataclass
class Stopper:
    """SIGTERMs the victim once enough requests completed and one of its streams is running."""

    victim: str
    pid: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    completed: int = 0
    stopped_at: float | None = None
    in_flight_at_stop: list[Result] = field(default_factory=list)
    running: list[Result] = field(default_factory=list)

    def on_frame(self, result: Result) -> None:
        with self.lock:
            self.running.append(result)
            if (self.stopped_at is None and self.completed >= KILL_AFTER_COMPLETED
                    and result.replica == self.victim):
                os.kill(self.pid, signal.SIGTERM)
                self.stopped_at = time.monotonic()
                self.in_flight_at_stop = [r for r in self.running if r.replica == self.victim and r.ended is None]

    def on_end(self, result: Result) -> None:
        with self.lock:
            self.completed += 1
            if result in self.running:
                self.running.remove(result)


def failover(nginx: str, stopper: Stopper) -> list[Result]:
    def one(i: int) -> Result:
        rng = random.Random(1000 + i)
        messages = [{"role": "user", "content": f"Request {i}. {notes(rng, rng.randint(10, 60))} Continue."}]
        result = stream_chat(nginx, f"failover {i}", messages, None, max_tokens=32, on_frame=stopper.on_frame)
        stopper.on_end(result)
        return result

    with ThreadPoolExecutor(FAILOVER_CONCURRENCY) as pool:
        return list(pool.map(one, range(FAILOVER_REQUESTS)))


def failover_problems(results: list[Result], stopper: Stopper) -> list[str]:
    problems = [f"lost: {result.describe()}" for result in results if not result.complete]
    if stopper.stopped_at is None:
        problems.append(f"{stopper.victim} never got SIGTERM: no stream of it ran after "
                        f"{KILL_AFTER_COMPLETED} requests completed")
        return problems
    if not stopper.in_flight_at_stop:
        problems.append("no stream was in flight on the stopped replica")
    late = [r for r in results if r.replica == stopper.victim and r.first_frame is not None
            and r.first_frame > stopper.stopped_at + 1.0 and r not in stopper.in_flight_at_stop]
    problems += [f"{r.label} started on {stopper.victim} after its SIGTERM" for r in late]
    if not any(result.moved for result in results):
        problems.append("nginx moved no request off the stopped replica (no X-Upstream with two addresses)")
    return problems


def upstream_statuses(access_log: Path | None) -> Counter[str]:
    """nginx's `$upstream_status` of every retried request ("502, 200": refused, then answered)."""
    seen: Counter[str] = Counter()
    if access_log is None or not access_log.exists():
        return seen
    for line in access_log.read_text(errors="replace").splitlines():
        _, found, rest = line.partition('upstream_status="')
        status = rest.split('"', 1)[0]
        if found and "," in status:
            seen[status] += 1
    return seen


# -- the run

def mean(values: list[int] | list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def timing(result: Result, name: str) -> float:
    """A number from the usage chunk's llama-server `timings` (0 without one)."""
    return float((result.timings or {}).get(name) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nginx", required=True, help="HOST:PORT of nginx")
    parser.add_argument("--replica", action="append", required=True,
                        help="HOST:PORT of a replica (as in nginx's upstream blocks); the last one as HOST:PORT=PID")
    parser.add_argument("--access-log", type=Path, help="nginx's access log (log_format upstreams)")
    args = parser.parse_args(argv)
    victim, _, pid = args.replica[-1].partition("=")
    replicas = [*args.replica[:-1], victim]
    if len(replicas) < 2 or not pid:
        parser.error("give two or more replicas, the last one as HOST:PORT=PID")
    names = {replica: chr(ord("A") + i) for i, replica in enumerate(replicas)}
    started = time.monotonic()
    wait_ready([*replicas, args.nginx])

    where, problems = probe(args.nginx, replicas)
    spread = Counter(names[replica] for replica in where.values())
    print(f"probe:    {len(where)} of {PROBE_IDS} session ids kept their replica on a second request; "
          f"spread {dict(sorted(spread.items()))}")
    conversations = [Conversation(session_id, replica)
                     for replica in replicas
                     for session_id in [s for s, r in where.items() if r == replica][:CONVERSATIONS_PER_REPLICA]]

    with ThreadPoolExecutor(len(conversations) or 1) as pool:
        for seed, conversation in enumerate(conversations):
            pool.submit(converse, args.nginx, conversation, seed)
    problems += affinity_problems(conversations)
    turns = [result for conversation in conversations for result in conversation.turns]
    firsts = [c.turns[0] for c in conversations if c.turns]
    laters = [r for c in conversations for r in c.turns[1:]]
    print(f"affinity: {len(conversations)} conversations x {TURNS} turns: "
          f"{sum(r.complete for r in turns)}/{len(turns)} streams complete; conversations per replica "
          f"{dict(sorted(Counter(names[c.replica] for c in conversations).items()))}; "
          f"{sum(r.upstream == c.replica for c in conversations for r in c.turns)}/{len(turns)} turns "
          f"on their session's replica")
    print(f"cache:    turn 1 cached {mean([r.cached_tokens for r in firsts]):.0f} of "
          f"{mean([r.prompt_tokens for r in firsts]):.0f} prompt tokens on average; turns 2-{TURNS} cached "
          f"{mean([r.cached_tokens for r in laters]):.0f} of {mean([r.prompt_tokens for r in laters]):.0f} "
          f"(timings.cache_n {mean([timing(r, 'cache_n') for r in laters]):.0f})")
    controls: list[Result] = []
    if all(len(c.turns) == TURNS and c.turns[-1].complete for c in conversations):
        controls = elsewhere(conversations, replicas)
        problems += [f"lost: {r.describe()}" for r in controls if not r.complete]
        print(f"          the last turns sent to the other replica: cached "
              f"{mean([r.cached_tokens for r in controls]):.0f} of {mean([r.prompt_tokens for r in controls]):.0f}")

    stopper = Stopper(victim, int(pid))
    results = failover(args.nginx, stopper)
    problems += failover_problems(results, stopper)
    per_replica = Counter(names.get(r.replica, r.replica or "-") for r in results)
    moved = [r for r in results if r.moved]
    after_stop = [r for r in results if stopper.stopped_at is not None and r.started >= stopper.stopped_at]
    print(f"failover: {sum(r.complete for r in results)}/{len(results)} streams complete, "
          f"{FAILOVER_CONCURRENCY} at a time; answered by {dict(sorted(per_replica.items()))}")
    if stopper.stopped_at is not None:
        in_flight = stopper.in_flight_at_stop
        print(f"          SIGTERM to {names[victim]} after {KILL_AFTER_COMPLETED} completed, "
              f"{len(in_flight)} stream(s) in flight on it: {sum(r.complete for r in in_flight)} finished; "
              f"{len(after_stop)} requests sent after it, {sum(r.complete for r in after_stop)} complete")
    statuses = upstream_statuses(args.access_log)
    print(f"          {len(moved)} request(s) moved by nginx to another replica "
          f"(X-Upstream {sorted({r.upstream for r in moved}) or '-'}; "
          f"nginx upstream_status {dict(statuses) or '-'})")

    total = PROBE_IDS * 2 + len(turns) + len(controls) + len(results)
    elapsed = time.monotonic() - started
    for problem in problems:
        print(f"PROBLEM:  {problem}")
    verdict = "OK: no request lost, affinity held" if not problems else f"FAILED: {len(problems)} problem(s)"
    print(f"result:   {verdict} ({total} requests in {elapsed:.1f} s)")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
