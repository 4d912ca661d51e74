"""The engine thread: one OS thread that runs every loaded model's `Worker` in turn.

All llama.cpp compute stays on this one thread, however many models are
loaded. The OpenMP build keeps a team of worker threads per calling thread;
two teams on the same cores make every barrier sleep instead of spin, and
decoding ran ~60% slower when that happened. So a server with two models
does not run two engine threads: it runs one, which takes one step of each
model that has work (admissions, one decode, sampling), round-robin, and
sleeps when none has.

Workers join with `attach` (their start-up work, timing decodes, runs here
too) and leave with a "stop" command in their own inbox; each inbox rings
the thread's bell, so the thread wakes for any model's request.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from igllama.engine.errors import EngineUnavailable
from igllama.engine.worker import Worker

log = logging.getLogger("igllama.engine")


class Inbox(queue.SimpleQueue[tuple[str, Any]]):
    """A worker's command queue; each command also wakes the engine thread."""

    def __init__(self, bell: threading.Event) -> None:
        super().__init__()
        self.bell = bell

    def put(self, item: tuple[str, Any], block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.bell.set()

    def put_nowait(self, item: tuple[str, Any]) -> None:
        self.put(item)


class EngineThread:
    """Steps every attached worker on one thread; `failure` says why it stopped, if it did."""

    def __init__(self, name: str = "igllama-engine") -> None:
        self.bell = threading.Event()
        self.failure: str | None = None
        self._workers: list[Worker] = []
        self._control: queue.SimpleQueue[tuple[str, Worker | None]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def inbox(self) -> Inbox:
        """A new worker's inbox, which wakes this thread."""
        return Inbox(self.bell)

    def attach(self, worker: Worker) -> None:
        """Run `worker`'s start-up on this thread, then step it with the others; returns
        when it is serving. Raises `EngineUnavailable` if the thread has stopped."""
        self._command("attach", worker)
        while not worker.started.wait(0.1):
            if not self.alive:
                raise EngineUnavailable(self.failure or "the engine thread stopped")

    def wait_detached(self, worker: Worker) -> None:
        """Wait until `worker` (sent "stop") has left the thread, or the thread has stopped."""
        while not worker.stopped.wait(0.1):
            if not self.alive:
                return

    def stop(self) -> None:
        """End the thread once its workers have left (their requests fail); waits for it."""
        if self.alive:
            self._command("stop", None)
            self._thread.join()

    def _command(self, command: str, worker: Worker | None) -> None:
        self._control.put((command, worker))
        self.bell.set()

    # -- on the thread

    def _run(self) -> None:
        try:
            while self._wait():
                for worker in list(self._workers):
                    # (an idle worker is skipped: its run would still publish stats and wake the loop)
                    if worker.has_work and not worker.run_once():
                        self._workers.remove(worker)
                        worker.stopped.set()
        except BaseException as exc:  # the last line of defence: say so, fail everyone
            self.failure = f"the engine thread stopped: {type(exc).__name__}: {exc}"
            log.critical("%s; every request now fails with 503 until the server is restarted", self.failure,
                         exc_info=True)
            for worker in self._workers:
                worker.crash(self.failure)

    def _wait(self) -> bool:
        """Sleep until some worker has work or a command comes; False once asked to stop."""
        if not any(worker.has_work for worker in self._workers):
            self.bell.wait()
        # Cleared before the inboxes are read: a command put from now on rings again.
        self.bell.clear()
        while True:
            try:
                command, worker = self._control.get_nowait()
            except queue.Empty:
                return True
            if command == "stop":
                for worker in self._workers:
                    worker.run_stop()
                    worker.stopped.set()
                self._workers.clear()
                return False
            if command == "attach" and worker is not None:
                worker.start()
                self._workers.append(worker)
