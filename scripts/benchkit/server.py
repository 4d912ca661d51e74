"""A server under test: spawned from a command line, ready when ``GET /health`` says 200."""

from __future__ import annotations

import http.client
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

from benchkit.machine import rss_kb


def free_port(host: str) -> int:
    """A port that is free on ``host`` now (the kernel's choice; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """One server process, its own session (so that stop() ends its children too) and log."""

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
