"""Rounds of alternating measurements, repeated while other processes disturb them.

Each round starts both servers afresh, then runs every step on one and then
the other, swapping the order at each step (ABBA) and each round, to cancel
machine drift. A measurement during which other processes used more than
``--max-interference`` cores is repeated after a wait for a quiet machine;
one still disturbed after ``--retries`` repeats is kept apart, and counts
only where a side has nothing better (see ``summary.summarize``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchkit.machine import CpuWatch, wait_for_quiet
from benchkit.server import Server, free_port
from benchkit.steps import Step, StepResult, round_steps, warm_up
from benchkit.summary import Samples
from benchkit.workload import Workload

_t0 = time.monotonic()

T = TypeVar("T")


def log(msg: str) -> None:
    """A progress line on stderr, stamped with the seconds since the run began."""
    print(f"[bench {time.monotonic() - _t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class Ledger:
    """Where the measurements go: clean samples, disturbed ones, and a detail record each."""

    def __init__(self, sides: list[str], max_interference: float) -> None:
        self.limit = max_interference
        self.samples: Samples = {s: defaultdict(list) for s in sides}
        self.disturbed: Samples = {s: defaultdict(list) for s in sides}
        self.details: list[dict] = []
        self.noisy: list[dict] = []  # the measurements kept apart

    def is_disturbed(self, load: float) -> bool:
        return self.limit > 0 and load > self.limit

    def record(self, rnd: int, step: str, side: str, load: float, values: dict[str, float],
               detail: dict) -> None:
        dest = self.disturbed if self.is_disturbed(load) else self.samples
        for key, value in values.items():
            dest[side][key].append(value)
        self.details.append({"round": rnd, "step": step, "side": side,
                             "interference_cores": round(load, 3), **detail})
        if self.is_disturbed(load):
            self.noisy.append({"round": rnd, "step": step, "side": side,
                               "cores": round(load, 2)})


class StepInputs:
    """What both servers get in one step. A repeated measurement renews them (the
    server's cache saw the old prompts), and the sides after it get the new ones too."""

    def __init__(self, make: Callable[[], dict]) -> None:
        self.make = make
        self.current = make()

    def renew(self, _discarded: object = None) -> None:
        self.current = self.make()


class Rounds:
    """Runs ``args.runs`` rounds over ``sides``, recording into ``ledger``.

    ``argv_for(side, port)`` gives the command line that starts a side's server.
    """

    def __init__(self, args: argparse.Namespace, sides: list[str], names: dict[str, str],
                 wl: Workload, argv_for: Callable[[str, int], list[str]], logdir: Path,
                 ledger: Ledger) -> None:
        self.args, self.sides, self.names, self.wl = args, sides, names, wl
        self.argv_for, self.logdir, self.ledger = argv_for, logdir, ledger
        self.commands: dict[str, list[str]] = {}  # side -> its last command line

    def run(self) -> None:
        for rnd in range(1, self.args.runs + 1):
            self.run_round(rnd)

    def run_round(self, rnd: int) -> None:
        order = self.sides if rnd % 2 == 1 else self.sides[::-1]
        servers: dict[str, Server] = {}
        try:
            for side in order:
                servers[side] = self.launch(side, rnd)
            for i, step in enumerate(round_steps(self.wl)):
                self.run_step(rnd, step, servers, order if i % 2 == 0 else order[::-1])
            for side in order:
                rss_end = servers[side].rss_mb()
                self.ledger.samples[side]["rss_end_mb"].append(rss_end)
                log(f"{self.label(rnd, side)}: RSS after the workload {rss_end:.1f} MB")
        finally:
            for srv in servers.values():
                srv.stop()

    def run_step(self, rnd: int, step: Step, servers: dict[str, Server],
                 order: list[str]) -> None:
        """One step on each server in ``order``, both given the same inputs."""
        name, fn, make_inputs = step
        inputs = StepInputs(make_inputs)
        for side in order:
            self.measure(rnd, side, servers[side], name, fn, inputs)

    def measure(self, rnd: int, side: str, srv: Server, name: str,
                fn: Callable[[Server, Workload, dict], StepResult], inputs: StepInputs) -> None:
        def attempt(_: int) -> tuple[StepResult, float]:
            watch = CpuWatch(srv.proc.pid if srv.proc else None)
            return fn(srv, self.wl, inputs.current), watch.interference()

        (vals, detail, msg), load = self.until_quiet(self.label(rnd, side), name, attempt,
                                                     inputs.renew)
        self.ledger.record(rnd, name, side, load, vals, detail)
        log(f"{self.label(rnd, side)}: {msg} (others: {load:.2f} cores)")

    def launch(self, side: str, rnd: int) -> Server:
        """Start a side's server, wait until it is ready, warm it up; record both times."""

        def attempt(n: int) -> tuple[tuple[Server, int, float, float], float]:
            port = free_port(self.args.host)
            argv = self.argv_for(side, port)
            self.commands[side] = argv
            srv = Server(side, argv, self.args.host, port, self.logdir, f"{side}-{rnd}-{n}")
            watch = CpuWatch(None)
            srv.start()
            try:
                ready = srv.wait_ready(self.args.ready_timeout)
                warm_up(srv, self.wl)
            except BaseException:
                srv.stop()
                raise
            load = watch.interference(srv.proc.pid if srv.proc else None)
            return (srv, port, ready, srv.rss_mb()), load

        (srv, port, ready, rss), load = self.until_quiet(
            self.label(rnd, side), "launch", attempt, lambda launched: launched[0].stop())
        self.ledger.record(rnd, "launch", side, load, {"ready_s": ready, "rss_mb": rss},
                           {"ready_s": ready, "rss_mb": rss, "port": port})
        log(f"{self.label(rnd, side)}: ready in {ready:.2f} s, RSS after warm-up {rss:.1f} MB "
            f"(others: {load:.2f} cores)")
        return srv

    def until_quiet(self, label: str, what: str, attempt: Callable[[int], tuple[T, float]],
                    discard: Callable[[T], None]) -> tuple[T, float]:
        """``attempt(n)`` gives an outcome and the cores that others used meanwhile;
        a disturbed outcome is discarded and, after a wait for quiet, tried again."""
        limit, retries = self.ledger.limit, self.args.retries
        n = 0
        while True:
            outcome, load = attempt(n)
            if limit <= 0 or load <= limit or n >= retries:
                return outcome, load
            log(f"{label}: {what}: other processes used {load:.2f} cores meanwhile; "
                f"waiting for a quiet machine, then again ({n + 1}/{retries})")
            wait_for_quiet(limit, self.args.quiet_wait)
            discard(outcome)
            n += 1

    def label(self, rnd: int, side: str) -> str:
        return f"round {rnd}/{self.args.runs} {self.names[side]}"
