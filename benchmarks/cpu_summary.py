"""Issue 13's CPU targets beside the values ``cpu_check.sh`` measured.

    python benchmarks/cpu_summary.py OUT        # OUT: the folder cpu_check.sh wrote

Reads ``latency-cpu-dit-xl.jsonl``, ``gemm-cpu.jsonl`` and ``compile-cost.jsonl`` and prints one
markdown table (also written to ``OUT/summary.md``): each target, the measured value, met or not.
A row whose data is missing says so instead of guessing.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import read_jsonl


def _latency(rows: list[dict[str, Any]], dtype: str, executor: str) -> dict[str, Any] | None:
    found = [r for r in rows if r.get("dtype") == dtype and r.get("executor") == executor
             and "median_s" in r]
    return found[-1] if found else None


def _best_l2c(rows: list[dict[str, Any]], dtype: str) -> dict[str, Any] | None:
    l2c = [r for name in ("regional-l2c", "inductor-l2c") if (r := _latency(rows, dtype, name))]
    return min(l2c, key=lambda r: r["median_s"]) if l2c else None


def summary(out: Path) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    lat = read_jsonl(out / "latency-cpu-dit-xl.jsonl")
    gemm = read_jsonl(out / "gemm-cpu.jsonl")
    cost = read_jsonl(out / "compile-cost.jsonl")
    table: list[tuple[str, str, str]] = []
    for dtype in ("float32", "bfloat16"):
        best = _best_l2c(lat, dtype)
        if best is None or "speedup_vs_eager-l2c" not in best:
            table.append((f"{dtype}: compiled L2C ≥ 1.3× eager reference L2C", "not measured", "–"))
        else:
            x = best["speedup_vs_eager-l2c"]
            table.append((f"{dtype}: compiled L2C ≥ 1.3× eager reference L2C",
                          f"{x:.2f}× ({best['executor']} {best['median_s']:.1f} s)",
                          "met" if x >= 1.3 else "NOT met"))
        key = "speedup_vs_torch-compile-default-uncached"
        if best is None or key not in best:
            table.append((f"{dtype}: ≥ 0.95 × ideal over torch.compile uncached", "not measured", "–"))
        else:
            share = best[key] / best["ideal_speedup"]
            table.append((f"{dtype}: ≥ 0.95 × ideal over torch.compile uncached",
                          f"{share:.2f} ({best[key]:.2f}× / ideal {best['ideal_speedup']:.3f}×)",
                          "met" if share >= 0.95 else "NOT met"))
        peak = [g["onednn_gflops"] for g in gemm if g.get("dtype") == dtype and g.get("m") == 2048]
        if best is not None and "gflops" in best and peak:
            table.append((f"{dtype}: achieved GFLOP/s (of the GEMM peak)",
                          f"{best['gflops']:.0f} of {max(peak):.0f} ({best['gflops'] / max(peak):.0%})",
                          "info"))
    for backend in ("regional", "inductor"):
        warm = [r for r in cost if r.get("backend") == backend and r.get("trial") == "warm"]
        cold = [r for r in cost if r.get("backend") == backend and r.get("trial") == "cold"]
        if not warm or not cold or cold[-1]["compile_s"] <= 0:
            table.append((f"{backend}: second load ≤ 20 % of the cold compile", "not measured", "–"))
            continue
        ratio = warm[-1]["compile_s"] / cold[-1]["compile_s"]
        table.append((f"{backend}: second load ≤ 20 % of the cold compile",
                      f"{ratio:.0%} ({warm[-1]['compile_s']:.1f} s vs {cold[-1]['compile_s']:.1f} s)",
                      "met" if ratio <= 0.2 else "NOT met"))
    return table


def main(argv: list[str] | None = None) -> str:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python benchmarks/cpu_summary.py OUT")
    out = Path(args[0])
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in summary(out)]
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "summary.md").write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
