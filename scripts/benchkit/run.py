"""One benchmark run from the command line to the report: ``scripts/bench.py``'s ``main``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import reference_server

from benchkit.cli import default_model, parse_args
from benchkit.machine import machine_info
from benchkit.report import report
from benchkit.rounds import Ledger, Rounds, log
from benchkit.summary import OURS, REF, summarize
from benchkit.workload import Workload


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
    ref_bin, build_info = locate_reference(args, sides)
    health_tool = choose_health_tool(args.health_tool)
    wl = Workload(host=args.host, gen_tokens=args.gen_tokens, doc_words=args.doc_words,
                  concurrency=args.concurrency, samples=args.samples,
                  health_seconds=args.health_seconds, health_conns=args.health_connections,
                  health_tool=health_tool, timeout=args.timeout)

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

    logdir = Path(tempfile.mkdtemp(prefix="igllama-bench-"))
    ledger = Ledger(sides, args.max_interference)
    names = {OURS: args.ours_label, REF: "llama-server"}
    rounds = Rounds(args, sides, names, wl, argv_for, logdir, ledger)
    started = time.time()
    loadavg_start = os.getloadavg()
    failed = False
    try:
        rounds.run()
    except (RuntimeError, OSError, ValueError, EOFError, asyncio.TimeoutError,
            subprocess.SubprocessError) as exc:
        failed = True
        log(f"FAILED: {type(exc).__name__}: {exc}")
        log(f"server logs kept in {logdir}")

    rows = summarize(ledger.samples, ledger.disturbed, args.concurrency)
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
                     "max_interference": ledger.limit, "retries": args.retries},
        "names": {"igllama": names[OURS], "llama_server": names[REF]},
        "commands": rounds.commands,
        "reference_build": build_info,
        "summary": rows,
        "samples": {side: dict(v) for side, v in ledger.samples.items()},
        "disturbed_samples": {side: dict(v) for side, v in ledger.disturbed.items() if v},
        "disturbed": ledger.noisy,
        "details": ledger.details,
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


def locate_reference(args: argparse.Namespace, sides: list[str]) -> tuple[Path | None, dict]:
    """The llama-server binary (built on first use, when a side needs it) and its build record."""
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
    return ref_bin, build_info


def choose_health_tool(choice: str) -> str:
    """``wrk`` where asked or, for ``auto``, where installed; else the asyncio client."""
    if choice != "auto":
        return choice
    if shutil.which("wrk"):
        return "wrk"
    log("wrk not found (apt-get install wrk): /health load uses the asyncio client")
    return "python"


def build_argv(template: str, extra: str, fields: dict) -> list[str]:
    return shlex.split(template.format(**fields)) + shlex.split(extra)
