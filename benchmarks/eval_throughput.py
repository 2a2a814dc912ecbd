"""Wall time of `l2c-compile eval` by stage: eval's former settings against its defaults, in one run.

    python benchmarks/eval_throughput.py                          # both FMNIST models, 1,000 samples
    python benchmarks/eval_throughput.py --models DiT-FMNIST --samples 200 --rounds 2

Each configuration runs the real command (``python -m l2c_compile.cli.main eval ... --format
json``) in a fresh process, so the total includes interpreter start, imports and compiling; the
report's ``stage_seconds`` split it into setup, compile, the uncached draw, the cached draw and
scoring. "before" is eval as it was (batch 250, one worker using torch's intra-op threads, eager);
"after" is today's default (batch 16, one worker per thread, each with one intra-op thread, the
regional backend: oneDNN linears and compiled sublayers).
The configurations alternate (before, after, before, after, …), so load from other jobs on a
shared machine falls on both. Appends one JSON line per run to
``results/eval-throughput-cpu.jsonl`` and prints the speedups of the totals and of each stage,
and how far apart the two settings' scores are (they draw the same samples, so FID, accuracy
and PSNR should agree up to float rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment

REPO = Path(__file__).resolve().parents[1]
CONFIGS: dict[str, list[str]] = {
    "before": ["--batch", "250", "--workers", "1", "--backend", "eager"],
    "after": [],
}
SCORES = ("fid", "fid_full", "class_accuracy", "class_accuracy_full", "psnr", "precision", "recall")


def run_once(model: str, nfe: int, samples: int, extra: list[str]) -> dict[str, Any]:
    """One `eval` in a fresh process: its report plus the process's wall seconds."""
    cmd = [sys.executable, "-m", "l2c_compile.cli.main", "eval", "--model", model, "--nfe",
           str(nfe), "--samples", str(samples), "--format", "json", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"eval failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": wall, "report": json.loads(proc.stdout), "command": cmd[2:]}


def load_average() -> list[float] | None:
    """The 1/5/15-minute load average (other jobs on the machine), where the OS reports it."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="DiT-FMNIST,U-ViT-FMNIST")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=1, help="before/after pairs per model")
    p.add_argument(
        "--first", choices=list(CONFIGS), default="before", help="which runs first in round 0"
    )
    p.add_argument("--out", default=str(RESULTS / "eval-throughput-cpu.jsonl"))
    p.add_argument("--note", default="", help="recorded in every line (e.g. other jobs running)")
    args = p.parse_args(argv)
    from l2c_compile.apps.evaluate import machine

    env = {**environment("cpu"), "cpu": machine()["cpu"], "cpus": os.cpu_count()}
    for model in args.models.split(","):
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
        for rnd in range(args.rounds):
            # Alternate which goes first, so neither always meets the same neighbours.
            first = list(CONFIGS) if args.first == "before" else list(reversed(CONFIGS))
            order = first if rnd % 2 == 0 else list(reversed(first))
            for name in order:
                load = load_average()
                got = run_once(model, args.nfe, args.samples, CONFIGS[name])
                rep = got["report"]
                row = {
                    "bench": "eval-throughput",
                    "model": model,
                    "config": name,
                    "round": rnd,
                    "command": " ".join(got["command"]),
                    "samples": args.samples,
                    "nfe": args.nfe,
                    "batch": rep["batch"],
                    "workers": rep["workers"],
                    "threads": rep["machine"]["threads"],
                    "wall_s": got["wall_s"],
                    "stage_seconds": rep["stage_seconds"],
                    "scores": {k: rep[k] for k in SCORES},
                    "load_average_before": load,
                    "load_average_after": load_average(),
                    "note": args.note,
                    "env": env,
                }
                runs[name].append(row)
                append_text(Path(args.out), json.dumps(row, default=str) + "\n")
                stages = " ".join(f"{k} {v:.1f}" for k, v in rep["stage_seconds"].items())
                print(
                    f"{model} {name:6s} round {rnd}: {got['wall_s']:7.1f} s  ({stages})  "
                    f"load {load}",
                    flush=True,
                )
        summarize(model, runs)


def summarize(model: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Print the median speedup of the totals and of each stage, and the score differences."""
    before, after = runs["before"], runs["after"]
    total = statistics.median(r["wall_s"] for r in before) / statistics.median(
        r["wall_s"] for r in after
    )
    parts = []
    for stage in before[0]["stage_seconds"]:
        b = statistics.median(r["stage_seconds"][stage] for r in before)
        a = statistics.median(r["stage_seconds"][stage] for r in after)
        parts.append(f"{stage} {b:.1f} → {a:.1f} s")
    diffs = {k: abs(before[0]["scores"][k] - after[0]["scores"][k]) for k in SCORES}
    print(f"{model}: total {total:.2f}× faster; " + "; ".join(parts), flush=True)
    print(
        f"{model}: |before − after| per score: "
        + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()),
        flush=True,
    )


if __name__ == "__main__":
    main()
