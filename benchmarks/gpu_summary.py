"""The GPU targets of ``shared/docs/PERFORMANCE.md`` beside what a GPU run measured.

    python benchmarks/gpu_summary.py results/latency-gpu.jsonl [--peers peers-dit.jsonl peers-pixart.jsonl]
        [--kernels results/kernels-gpu.jsonl]

Reads the JSON lines of ``benchmarks/latency.py`` (and optionally ``benchmarks/peers.py`` and
``benchmarks/kernel_bandwidth.py``) and prints one markdown table: each target, the measured value,
and whether it is met. A target whose rows are missing (skipped by a time limit, failed) is listed
as "not measured", never guessed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import read_jsonl
from peers import L2C_CACHED, peer_ratios

# Targets for DiT-XL/2 256, released DDIM20 router, bf16, DDIM-20 (PERFORMANCE.md, "Targets").
SECONDS_TARGET = {8: 0.16, 1: 0.035}
SHARE_OF_IDEAL = 0.95
OVER_TORCH_COMPILE = 1.25  # n = 8, over the fastest torch.compile mode of the uncached model
OVER_CACHE_DIT = 1.2  # over cache-dit at the same removed compute (its static matched mask)
L2C_EXECUTORS = ("compiled-l2c", "compiled+graph-l2c", "inductor-l2c", "inductor+graph-l2c")


def load(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` and of the partial file a killed run left beside it."""
    return read_jsonl(path)


def _fmt_s(row: dict[str, Any] | None) -> str:
    return "not measured" if row is None else f"{row['median_s']:.4f} s ({row['executor']})"


def _target_cell(rows: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """The rows of the targets' configuration: DiT-XL/2, bf16, DDIM-20, ``batch`` images."""
    return [
        r
        for r in rows
        if (r["model"], r["dtype"], r["sampler"], r["nfe"], r["batch"])
        == ("DiT-XL/2", "bfloat16", "ddim", 20, batch)
    ]


def targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for every target the rows can speak to."""
    timed = [r for r in rows if "median_s" in r]
    out: list[tuple[str, str, str]] = []
    for batch, limit in SECONDS_TARGET.items():
        cell = [r for r in _target_cell(timed, batch) if r["executor"] in L2C_EXECUTORS]
        best = min(cell, key=lambda r: r["median_s"], default=None)
        verdict = "–" if best is None else ("met" if best["median_s"] <= limit else "NOT met")
        out.append(
            (f"DiT-XL/2 bf16 DDIM-20 n={batch}: compiled L2C ≤ {limit} s", _fmt_s(best), verdict)
        )
        ref = next((r for r in _target_cell(timed, batch) if r["executor"] == "eager-l2c"), None)
        if best is not None and ref is not None:
            out.append(
                (
                    f"n={batch}: compiled L2C over the eager reference L2C (official semantics)",
                    f"{ref['median_s'] / best['median_s']:.2f}× ({ref['median_s']:.4f} s → {best['median_s']:.4f} s)",
                    "info",
                )
            )
    for r in timed:
        if r["executor"] in L2C_EXECUTORS and "share_of_ideal" in r:
            share = r["share_of_ideal"]
            out.append(
                (
                    f"{r['model']} {r['dtype']} n={r['batch']} {r['executor']}: speedup over its "
                    f"uncached twin ≥ {SHARE_OF_IDEAL} × ideal ({r['ideal_speedup']:.3f}×)",
                    f"{share:.3f} × ideal ({r['speedup_vs_same_uncached']:.3f}×)",
                    "met" if share >= SHARE_OF_IDEAL else "NOT met",
                )
            )
    by = {(r["model"], r["dtype"], r["batch"], r["executor"]): r for r in timed}
    for (model, dtype, batch, name), r in by.items():
        if not name.endswith("-l2c") or "peak_extra_bytes" not in r:
            continue
        twin = by.get((model, dtype, batch, name.removesuffix("-l2c") + "-uncached"))
        if twin is None or "peak_extra_bytes" not in twin:
            continue
        bound = twin["peak_extra_bytes"] + r["cache_bytes_expected"]
        out.append(
            (
                f"{model} {dtype} n={batch} {name}: peak memory ≤ uncached + live cache",
                f"{r['peak_extra_bytes'] / 2**20:.0f} MiB vs {bound / 2**20:.0f} MiB",
                "met" if r["peak_extra_bytes"] <= bound else "NOT met",
            )
        )
    for r in rows:
        if "skipped" in r or "error" in r:
            out.append(
                (
                    f"{r['model']} n={r['batch']} {r['executor']}",
                    r.get("skipped") or r["error"][:80],
                    "not run",
                )
            )
    return out


def _fastest(rows: list[dict[str, Any]], names: tuple[str, ...] | str) -> dict[str, Any] | None:
    """The fastest timed row whose executor is in ``names`` (a tuple) or starts with it (a str)."""
    hits = [r for r in rows if "median_s" in r and (r["executor"] in names if isinstance(names, tuple)
                                                    else r["executor"].startswith(names))]
    return min(hits, key=lambda r: r["median_s"], default=None)


def peer_targets(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) from ``benchmarks/peers.py`` rows: full-size pipelines only."""
    out: list[tuple[str, str, str]] = []
    rows = [r for r in peer_ratios(rows) if not r.get("tiny")]
    for key in dict.fromkeys((r["pipeline"], r["dtype"], r["batch"]) for r in rows):
        pipeline, dtype, batch = key
        cell = [r for r in rows if (r["pipeline"], r["dtype"], r["batch"]) == key]
        where = f"{pipeline} {dtype} n={batch}"
        l2c = _fastest(cell, L2C_CACHED)
        if pipeline == "DiTPipeline" and dtype == "bfloat16" and batch in SECONDS_TARGET:
            limit = SECONDS_TARGET[batch]
            out.append((f"{where}: compile_pipeline L2C ≤ {limit} s (whole pipe(...) call)", _fmt_s(l2c),
                        "–" if l2c is None else ("met" if l2c["median_s"] <= limit else "NOT met")))
        tc = _fastest(cell, "torch-compile-")
        if l2c is not None and tc is not None:
            ratio = tc["median_s"] / l2c["median_s"]
            goal = pipeline == "DiTPipeline" and batch == 8
            out.append((f"{where}: L2C over the fastest torch.compile mode measured"
                        + (f" ≥ {OVER_TORCH_COMPILE}×" if goal else ""),
                        f"{ratio:.2f}× ({tc['executor']} {tc['median_s']:.4f} s)",
                        ("met" if ratio >= OVER_TORCH_COMPILE else "NOT met") if goal else "info"))
        for kind in ("static", "dynamic"):
            cd = _fastest(cell, f"cache-dit-{kind}")
            if l2c is None or cd is None:
                continue
            ratio = cd["median_s"] / l2c["median_s"]
            matched = kind == "static"
            out.append((f"{where}: L2C over cache-dit {kind}"
                        + (f" (matched removed compute: ideal {l2c.get('ideal_speedup', 0):.3f}× vs "
                           f"{cd.get('ideal_speedup', 0):.3f}×) ≥ {OVER_CACHE_DIT}×" if matched else ""),
                        f"{ratio:.2f}× ({cd['executor']} {cd['median_s']:.4f} s)",
                        ("met" if ratio >= OVER_CACHE_DIT else "NOT met") if matched else "info"))
        for r in cell:
            if "share_of_ideal" in r:
                out.append((f"{where} {r['executor']}: share of its ideal {r['ideal_speedup']:.3f}× over its "
                            "uncached twin", f"{r['share_of_ideal']:.3f}", "info"))
        for r in cell:
            if "skipped" in r or "error" in r:
                out.append((f"{where} {r['executor']}", r.get("skipped") or r["error"][:80], "not run"))
    return out


def kernel_lines(rows: list[dict[str, Any]]) -> list[str]:
    """One line per (op, case, dtype): GB/s of each variant and the fused kernel's share of peak."""
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["op"], r["case"], r["dtype"]), {})[r["variant"]] = r
    lines = []
    for (op, case, dtype), variants in cells.items():
        rates = ", ".join(f"{v} {r['gbps']:.0f} GB/s" for v, r in variants.items())
        fused = variants.get("l2c_triton", {})
        share = fused.get("pct_of_roofline")
        ok = fused.get("within_tol")
        lines.append(
            f"- {op} {case} {dtype}: {rates}"
            + (f"; fused at {share:.0f} % of the copy roofline" if share is not None else "")
            + ("" if ok in (None, True) else " — OUTSIDE TOLERANCE")
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Print (and with ``--out`` write) the summary."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("latency", type=Path, nargs="+", help="latency.py JSON lines")
    p.add_argument("--peers", type=Path, nargs="*", default=[], help="peers.py JSON lines")
    p.add_argument("--kernels", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [r for path in args.latency for r in load(path)]
    peer_rows = [r for path in args.peers for r in load(path)]
    device = next((r["device_name"] for r in rows + peer_rows if "device_name" in r), "unknown device")
    text = [f"# GPU check on {device}", "", "| target | measured | verdict |", "|---|---|---|"]
    text += [f"| {t} | {m} | {v} |" for t, m, v in targets(rows)] or ["| (no latency rows) | | |"]
    if args.peers:
        text += ["", "Peers on diffusers pipelines (benchmarks/peers.py):", "",
                 "| target | measured | verdict |", "|---|---|---|"]
        text += [f"| {t} | {m} | {v} |" for t, m, v in peer_targets(peer_rows)] or ["| (no peers rows) | | |"]
    if args.kernels is not None:
        text += ["", "Fused epilogues (benchmarks/kernel_bandwidth.py):", *kernel_lines(load(args.kernels))]
    body = "\n".join(text) + "\n"
    print(body)
    if args.out is not None:
        args.out.write_text(body, encoding="utf-8")


if __name__ == "__main__":
    main()
