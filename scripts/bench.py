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

The parts live in ``scripts/benchkit/`` (see its ``__init__``); this file is
the command line's entry point. A new workload is one ``step_*`` function in
``benchkit/steps.py``, listed in ``round_steps``, with its figures named in
``benchkit/summary.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit.run import main

if __name__ == "__main__":
    sys.exit(main())
