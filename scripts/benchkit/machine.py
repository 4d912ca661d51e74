"""What the machine and its processes are doing: CPU time, resident memory, the CPU model.

Everything is read from /proc (Linux only), so that the benchmark can tell
the CPU time of the measured server from that of everything else running.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants: a server may run its work in child processes."""
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
    out, todo = [pid], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def rss_kb(pid: int) -> int:
    """VmRSS of ``pid`` plus all its descendants, in kB."""
    total = 0
    for p in process_tree(pid):
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
    for p in process_tree(pid):
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


def machine_info() -> dict:
    """The CPU model, core count, kernel and Python version, for a run's record."""
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
