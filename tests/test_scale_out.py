"""Scale-out behind nginx: deploy/nginx.conf checked end to end by scripts/scale-out.sh.

The script starts two replicas of the demo model and nginx in front of them,
then sends a load through nginx: conversations with an X-Session-Id must stay
on one replica and find their earlier turns in its prefix cache, and when one
replica gets SIGTERM mid-run no request may be lost. It takes about a minute
on 2 cores: leave it out with `-k "not scale_out"`.

The suite installs nothing: without nginx on PATH this test is skipped
(`apt-get install nginx-light`, or run the script once as root: it installs
nginx itself).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 400.0  # the script's own bound is about two minutes on 2 busy cores


def test_nginx_keeps_sessions_on_their_replica_and_loses_no_request_when_one_stops(model_path: str) -> None:
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light); the suite installs nothing")
    run = subprocess.run(
        ["bash", "scripts/scale-out.sh"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    report = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.returncode == 0, report
    assert "result:   OK: no request lost, affinity held" in run.stdout, report
    assert "PROBLEM" not in run.stdout, report

    # Every conversation's turns came from its session's replica, and both replicas served some.
    affinity = re.search(r"affinity: (\d+) conversations x (\d+) turns: (\d+)/(\d+) streams complete; "
                         r"conversations per replica \{'A': (\d+), 'B': (\d+)\}; (\d+)/(\d+) turns", run.stdout)
    assert affinity, report
    conversations, turns, complete, sent, on_a, on_b, kept, total = map(int, affinity.groups())
    assert complete == sent == kept == total == conversations * turns, report
    assert on_a > 0 and on_b > 0, report

    # Later turns were served from the cache: most of their prompt, far more than elsewhere.
    cache = re.search(r"turns 2-\d+ cached (\d+) of (\d+).*\n.*other replica: cached (\d+) of (\d+)", run.stdout)
    assert cache, report
    cached, prompt, cached_elsewhere, prompt_elsewhere = map(int, cache.groups())
    assert cached > prompt / 2 and cached_elsewhere < prompt_elsewhere / 4, report

    # The stopped replica finished what it had, and nginx moved at least one request off it.
    drained = re.search(r"SIGTERM to B after \d+ completed, (\d+) stream\(s\) in flight on it: (\d+) finished",
                        run.stdout)
    assert drained and int(drained.group(1)) >= 1 and drained.group(1) == drained.group(2), report
    failover = re.search(r"failover: (\d+)/(\d+) streams complete", run.stdout)
    assert failover and failover.group(1) == failover.group(2), report
    moved = re.search(r"(\d+) request\(s\) moved by nginx", run.stdout)
    assert moved and int(moved.group(1)) >= 1, report
