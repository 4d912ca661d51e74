"""A run's result as a table on stdout, a JSON file and a PNG chart.

The chart is drawn by ``scripts/bench_png.py`` with the standard library only.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import bench_png

from benchkit.summary import OURS, REF, fmt


def report(result: dict, out: str | None, png: str | None) -> None:
    """Print the table and write the JSON and the PNG of a run's ``result``."""
    rows, st = result["summary"], result["settings"]
    names = {OURS: result["names"]["igllama"], REF: result["names"]["llama_server"]}
    col = (names[OURS], names[REF])
    print()
    print(f"model {Path(result['model']).name}; threads {st['threads']}/{st['threads_batch']}, "
          f"ctx {st['ctx_size']}, slots {st['parallel']}, batch {st['batch_size']}; "
          f"{st['runs']} rounds x {st['samples']} samples; medians")
    print_table(rows, col)
    for side, vals in result["samples"].items():
        pt = vals.get("prefill_prompt_tokens") or []
        gt = vals.get("gen_tokens") or []
        if pt or gt:
            print(f"{names[side]}: long prompt {fmt(statistics.median(pt) if pt else None, 0)} "
                  f"tokens; generation produced {sorted({int(x) for x in gt})} tokens")
    noisy = result.get("disturbed") or []
    if noisy:
        print(f"WARNING: {len(noisy)} measurement(s) ran while other processes used more than "
              f"{st['max_interference']} cores (after {st['retries']} repeats); the medians "
              "leave them out unless nothing else was left (see 'disturbed' in the JSON)")
    for r in rows:
        if r["from_disturbed_samples"]:
            print(f"WARNING (*): {r['label']}: only disturbed samples for "
                  f"{', '.join(names[s] for s in r['from_disturbed_samples'])}")
    if not result["complete"]:
        print("WARNING: the run did not complete; the figures above are partial")
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"JSON: {path}")
    if png:
        build = result.get("reference_build") or {}
        m = result.get("machine") or {}
        footer = [
            (f"{Path(result['model']).name}; {str(m.get('cpu', ''))[:48]}, "
             f"{m.get('cores', '?')} cores; {result['started_at'][:10]}"),
            (f"threads {st['threads']}, ctx {st['ctx_size']}, slots {st['parallel']}, batch "
             f"{st['batch_size']}; {st['runs']} rounds; llama.cpp "
             f"{str(build.get('llama_cpp_commit', '?'))[:10]} "
             f"(llama-cpp-python {build.get('llama_cpp_python', '?')})"),
        ]
        if noisy:
            footer.append(f"WARNING: {len(noisy)} measurement(s) disturbed by other processes")
        if not result["complete"]:
            footer.append("WARNING: incomplete run, partial figures")
        print(f"PNG:  {write_png(Path(png), rows, col, footer)}")


def _cell(v: float | None, nd: int, unit: str, star: bool = False) -> str:
    if v is None:
        return "-"
    if unit == "x":
        return f"{v:.{nd}f}" + ("*" if star else "")
    return f"{v:,.{nd}f} {unit}" + ("*" if star else "")


def print_table(rows: list[dict], names: tuple[str, str]) -> None:
    head = ["metric", names[0], names[1], "ratio", "target", "met?"]
    body = []
    for r in rows:
        nd, unit, dis = r["decimals"], r["unit"], r["from_disturbed_samples"]
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        body.append([
            r["label"] + ("" if r["higher_is_better"] else " (lower=better)"),
            _cell(r["igllama"], nd, unit, OURS in dis),
            _cell(r["llama_server"], nd, unit, REF in dis),
            "-" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"], met,
        ])
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(head))
    print("  ".join("-" * w for w in widths))
    for b in body:
        print(line(b))


def write_png(path: Path, rows: list[dict], names: tuple[str, str], footer: list[str]) -> Path:
    prows = []
    for r in rows:
        nd, unit = r["decimals"], r["unit"]
        note, ok = "", r["met"]
        if r["metric"] == "turn2_over_turn1":
            note = "" if r["igllama"] is None else f"{r['igllama']:.2f}"
        elif r["metric"] == "rss_mb" and r["ratio"] is not None:
            note = f"{r['igllama'] - r['llama_server']:+.0f} MB"
        elif r["ratio"] is not None:
            note = f"x{r['ratio']:.3f}"
        label = r["label"] + ("" if r["higher_is_better"] else " (lower better)")
        a_txt = "" if r["igllama"] is None else _cell(r["igllama"], nd, unit)
        b_txt = "" if r["llama_server"] is None else _cell(r["llama_server"], nd, unit)
        prows.append(bench_png.Row(label, r["igllama"], r["llama_server"], a_txt, b_txt, note, ok))
    title = f"{names[0]} vs {names[1]}: medians, same llama.cpp kernels, same machine"
    return bench_png.write_bar_chart(path, prows, title, names, footer)

