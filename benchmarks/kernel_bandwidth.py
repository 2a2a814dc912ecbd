"""Bandwidth of the fused reuse epilogues vs torch eager and torch.compile (inductor), on CUDA.

Each op is memory-bound, so the figure of merit is effective bandwidth: the bytes the fused op
must move (every input read once + both outputs written once, the same count for every variant)
divided by the median time. The device's DRAM roofline (bus width x memory clock x 2, from the
CUDA device properties) is printed beside it. All variants of a case are measured in one run.

    python benchmarks/kernel_bandwidth.py [--dtype bf16] [--rep-ms 200] [--out benchmarks/results/kernels.jsonl]

One JSON line per (op, shape, dtype, variant) on stdout, appended to ``--out``. On a machine
without CUDA it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "kernels.jsonl"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# (rtol = atol) against an fp32 eager run of the same inputs.
TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}
# (label, (B, T, D)): DiT-XL/2 at 256 px with CFG for n=1 and n=8 images, U-ViT-H/2 likewise
# (256 patches + 2 extra tokens), and an odd shape that defeats power-of-two tiling.
SHAPES = [
    ("dit-xl2-n1", (2, 256, 1152)),
    ("dit-xl2-n8", (16, 256, 1152)),
    ("uvit-h2-n1", (2, 258, 1152)),
    ("uvit-h2-n8", (16, 258, 1152)),
    ("odd", (1, 1823, 781)),
]


# ----------------------------------------------------------------------------- the patterns


def eager_reuse1(x, gate, cached, shift, scale, eps=1e-6):
    """What the unfused DiT code runs when one sublayer is reused."""
    x_new = x + gate[:, None, :] * cached
    h = F.layer_norm(x_new, x_new.shape[-1:], eps=eps) * (1 + scale[:, None, :])
    return x_new, h + shift[:, None, :]


def eager_reuse2(x, gate1, cached1, gate2, cached2, shift, scale, eps=1e-6):
    """Unfused DiT block with both sublayers reused, then the next block's modulated LN."""
    x_new = x + gate1[:, None, :] * cached1
    x_new = x_new + gate2[:, None, :] * cached2
    h = F.layer_norm(x_new, x_new.shape[-1:], eps=eps) * (1 + scale[:, None, :])
    return x_new, h + shift[:, None, :]


def eager_layernorm(x, cached, weight, bias, eps=1e-5):
    """Unfused U-ViT residual add and the next affine LayerNorm."""
    x_new = x + cached
    return x_new, F.layer_norm(x_new, x_new.shape[-1:], weight, bias, eps)


def make_case(
    op: str, shape: tuple[int, int, int], dtype: torch.dtype, device: str = "cuda"
) -> tuple[tuple, int]:
    """Inputs for ``op`` and the bytes the fused op moves (reads + writes)."""
    b, t, d = shape
    dev = device

    def rand(*size: int) -> torch.Tensor:
        return torch.randn(*size, device=dev, dtype=dtype)

    x, c1, c2 = rand(b, t, d), rand(b, t, d), rand(b, t, d)
    rows, vec = b * t * d, b * d
    size = torch.finfo(dtype).bits // 8
    if op == "reuse_residual_layernorm":
        return (x, c1, 1 + 0.1 * rand(d), rand(d)), size * (2 * rows + 2 * d + 2 * rows)
    # Strided adaLN chunks, as DiT produces them.
    shift, scale, gate1, _, _, gate2 = rand(b, 6 * d).chunk(6, dim=1)
    if op == "reuse_residual_ln_modulate":
        return (x, gate1, c1, shift, scale), size * (2 * rows + 3 * vec + 2 * rows)
    return (x, gate1, c1, gate2, c2, shift, scale), size * (3 * rows + 4 * vec + 2 * rows)


# ----------------------------------------------------------------------------- environment


def git_sha() -> str:
    """HEAD's SHA with '+dirty' when the work tree has changes; 'unknown' outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def roofline_gbps() -> float | None:
    """Peak DRAM bandwidth of the current CUDA device in GB/s (double data rate), if reported."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


def median_us(fn: Callable[[], object], rep_ms: int) -> float:
    """Median wall time of ``fn`` on the GPU in microseconds (Triton's do_bench, L2 flushed)."""
    from triton.testing import do_bench

    return 1e3 * float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))


# ----------------------------------------------------------------------------- main


def run(dtypes: list[str], rep_ms: int, out: Path, use_inductor: bool) -> list[dict]:
    """Measure every (op, shape, dtype) with each variant; print and append JSON lines."""
    import triton

    from l2c_compile import kernels
    from l2c_compile.io import write_text_atomic

    ops: dict[str, tuple[Callable, Callable]] = {
        "reuse_residual_ln_modulate": (kernels.reuse_residual_ln_modulate, eager_reuse1),
        "reuse2_residual_ln_modulate": (kernels.reuse2_residual_ln_modulate, eager_reuse2),
        "reuse_residual_layernorm": (kernels.reuse_residual_layernorm, eager_layernorm),
    }
    peak = roofline_gbps()
    common = {
        "bench": "kernels",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "git_sha": git_sha(),
        "roofline_gbps": None if peak is None else round(peak, 1),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    records: list[dict] = []
    for op, (fused, eager) in ops.items():
        compiled = torch.compile(eager, dynamic=False) if use_inductor else None
        for label, shape in SHAPES:
            for dtype_name in dtypes:
                dtype = DTYPES[dtype_name]
                args, nbytes = make_case(op, shape, dtype)
                # Check before timing: a fast wrong kernel is worth nothing.
                want = eager(*[a.float() for a in args])
                got = fused(*args)
                pairs = list(zip(got, want, strict=True))
                max_err = max((g.float() - w).abs().max().item() for g, w in pairs)
                tol = TOL[dtype]
                ok = all(torch.allclose(g.float(), w, rtol=tol, atol=tol) for g, w in pairs)
                variants: dict[str, Callable[[], object]] = {
                    "l2c_triton": lambda f=fused, a=args: f(*a),
                    "torch_eager": lambda f=eager, a=args: f(*a),
                }
                if compiled is not None:
                    variants["torch_inductor"] = lambda f=compiled, a=args: f(*a)
                for variant, fn in variants.items():
                    us = median_us(fn, rep_ms)
                    gbps = nbytes / (us * 1e-6) / 1e9
                    rec = {
                        **common,
                        "op": op,
                        "variant": variant,
                        "case": label,
                        "shape": list(shape),
                        "dtype": dtype_name,
                        "bytes": nbytes,
                        "median_us": round(us, 2),
                        "gbps": round(gbps, 1),
                        "pct_of_roofline": None if peak is None else round(100 * gbps / peak, 1),
                        "roofline_us": None if peak is None else round(nbytes / peak / 1e3, 2),
                        "max_abs_err_vs_fp32": max_err if variant == "l2c_triton" else None,
                        "within_tol": ok if variant == "l2c_triton" else None,
                    }
                    print(json.dumps(rec), flush=True)
                    records.append(rec)
    previous = out.read_text(encoding="utf-8") if out.exists() else ""
    if previous and not previous.endswith("\n"):
        previous += "\n"
    write_text_atomic(out, previous + "".join(json.dumps(r) + "\n" for r in records))
    return records


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, skip cleanly without CUDA, run the sweep."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="repeatable")
    parser.add_argument("--rep-ms", type=int, default=200, help="timing budget per variant")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("benchmarks/kernel_bandwidth.py: no CUDA device here; the kernel benchmark needs one, skipped")
        return 0
    try:
        import triton  # noqa: F401
    except ImportError:
        print("benchmarks/kernel_bandwidth.py: triton is not installed; nothing to benchmark, skipped")
        return 0
    run(args.dtype or ["fp32", "fp16", "bf16"], args.rep_ms, args.out, not args.no_inductor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
