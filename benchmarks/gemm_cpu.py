"""GFLOP/s of one linear layer on this CPU, by library: what the CPU backends choose between.

    python benchmarks/gemm_cpu.py                     # DiT-XL/2's linear shapes, n = 1 and 8 with CFG
    python benchmarks/gemm_cpu.py --threads 2 --repeats 20

Paths, each ``y = x Wᵀ + b`` on the same tensors:

  aten           ``F.linear``: torch's default (MKL sgemm for float32 on x86, oneDNN for bfloat16)
  onednn         ``torch.ops.mkldnn._linear_pointwise`` on the plain weight (what
                 ``backend="inductor"`` and ``"regional"`` call on CPU: l2c_compile/runtime/backends.py)
  onednn-packed  the same with the weight reordered once for this batch (inductor's freezing path)

The largest GFLOP/s seen (a 2048³ float32 and bfloat16 GEMM through oneDNN) is reported as the
machine's practical peak, the yardstick for the sampler's achieved GFLOP/s. JSON lines to
``benchmarks/results/gemm-cpu.jsonl`` (machine named) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment, markdown_table

from l2c_compile.runtime import features

# DiT-XL/2 (hidden 1152, MLP 4608): qkv, attention proj, fc1, fc2; M = tokens × rows
SHAPES = [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152)]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gflops(fn: Callable[[], Any], flop: float, repeats: int) -> float:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return flop * repeats / (time.perf_counter() - t0) / 1e9


def onednn_feature(dtype: torch.dtype) -> str:
    """The feature (l2c_compile.runtime.features) oneDNN's GEMMs in ``dtype`` need."""
    return {torch.float32: "onednn", torch.bfloat16: "onednn_bf16", torch.float16: "onednn_fp16"}[dtype]


def paths(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """The GEMM paths to time; oneDNN's only where this CPU has them for ``x``'s dtype."""
    timed: dict[str, Callable[[], Any]] = {"aten": lambda: F.linear(x, w, b)}
    if not features.has(onednn_feature(x.dtype)):
        return timed
    packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
    timed["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    timed["onednn-packed"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    return timed


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", default="512,4096", help="M: tokens × rows (DiT-XL/2 n=1, n=8 with CFG)")
    p.add_argument("--out", default=str(RESULTS / "gemm-cpu.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = {**environment("cpu"), "cpu": cpu_model(), "threads": args.threads}
    g = torch.Generator().manual_seed(0)
    rows: list[dict[str, Any]] = []
    for dtype in (torch.float32, torch.bfloat16):
        shapes = [(m, k, n) for m in (int(v) for v in args.rows.split(",")) for k, n in SHAPES]
        for m, k, n in [*shapes, (2048, 2048, 2048)]:
            x = torch.randn(m, k, generator=g).to(dtype)
            w = torch.randn(n, k, generator=g).to(dtype)
            b = torch.randn(n, generator=g).to(dtype)
            row = {"benchmark": "gemm", **env, "dtype": str(dtype).removeprefix("torch."),
                   "m": m, "k": k, "n": n}
            for name, fn in paths(x, w, b).items():
                row[f"{name}_gflops"] = gflops(fn, 2.0 * m * k * n, args.repeats)
            if "onednn_gflops" in row:
                row["onednn_over_aten"] = row["onednn_gflops"] / row["aten_gflops"]
            else:
                row["note"] = features.missing(onednn_feature(dtype))
            rows.append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    append_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    cols = [("dtype", "dtype"), ("m", "M"), ("k", "K"), ("n", "N"), ("aten_gflops", "aten GFLOP/s"),
            ("onednn_gflops", "oneDNN GFLOP/s"), ("onednn-packed_gflops", "oneDNN packed GFLOP/s"),
            ("onednn_over_aten", "oneDNN ÷ aten")]
    title = f"\n### {env['cpu']} · {args.threads} threads · torch {torch.__version__} · git {env['git']}\n\n"
    append_text(out.with_suffix(".md"), title + markdown_table(rows, cols) + "\n")
    return rows


if __name__ == "__main__":
    main()
