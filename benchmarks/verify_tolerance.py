"""Measure how far low-precision artifacts land from the float32 reference (verify's tolerances).

    python benchmarks/verify_tolerance.py                 # every model in the table, 6 seeds
    python benchmarks/verify_tolerance.py --models DiT-FMNIST --seeds 0,1,2,3,4,5,6,7

For each model and dtype (bfloat16, float16) it compiles the model's schedule (the shipped
router at NFE 20 for the Fashion-MNIST models; a seeded random schedule reusing half the
sublayers at NFE 6 for the tiny random-weight models), samples a batch of 2 per seed, and prints
one JSON line: the RMS relative error and the max relative error against the float32 reference
executor, and the max relative error against the reference executor run in the artifact's own
dtype. ``l2c_compile/runtime/tolerances.py`` sets the tolerances (about 2× the measured maximum) from
these numbers; re-run this after retraining or resizing a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment

import l2c_compile
from l2c_compile.apps.demo import shipped_router
from l2c_compile.compiler import reference
from l2c_compile.models.registry import build_model, get_spec, init_random, load_checkpoint
from l2c_compile.runtime import features
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import default_threshold, heuristic, import_router

MODELS = ("DiT-FMNIST", "U-ViT-FMNIST", "DiT-Tiny", "U-ViT-Tiny")


def _rel_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(name: str, seeds: list[int], batch: int = 2) -> list[dict]:
    """One row per dtype for model ``name``."""
    spec = get_spec(name)
    model = build_model(spec)
    if spec.checkpoint:
        load_checkpoint(model, spec.checkpoint)
    else:
        init_random(model, 3)
    model.eval()
    depth = len(model.transformer_blocks())
    router = shipped_router(spec.name, spec.default_sampler, 20)
    nfe = 20 if router else 6
    plan = make_plan(
        spec.default_sampler, nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input
    )
    if router:
        sched = import_router(
            router, plan, model=spec.name, depth=depth, threshold=default_threshold(spec.family)
        )
    else:
        sched = heuristic("random", plan, model=spec.name, depth=depth, fraction=0.5)
    scale = spec.default_cfg_scale
    rows = []
    for dtype_name in ("bfloat16", "float16"):
        dtype = getattr(torch, dtype_name)
        sampler = l2c_compile.compile(model, plan, sched, dtype=dtype)
        rms, max32, same = [], [], []
        for seed in seeds:
            g = torch.Generator().manual_seed(seed)
            noise = torch.randn(batch, *spec.latent_shape, generator=g)
            labels = torch.randint(0, spec.num_classes, (batch,), generator=g)
            out = sampler(noise, labels, scale)
            low = reference.sample(sampler.model, plan, sched, noise, labels, scale)
            ref = reference.sample(sampler.model.float(), plan, sched, noise, labels, scale)
            sampler.model.to(dtype)
            rms.append(_rel_rms(out, ref))
            max32.append(_rel_max(out, ref))
            same.append(_rel_max(out, low))
        rows.append(
            {
                "model": name,
                "dtype": dtype_name,
                "nfe": nfe,
                "batch": batch,
                "seeds": seeds,
                "rms_rel_error_max": max(rms),
                "max_rel_error_max": max(max32),
                "max_rel_error_same_dtype_max": max(same),
                "rms_rel_error": rms,
                "max_rel_error": max32,
            }
        )
    return rows


def main() -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    env = {**environment("cpu"), "onednn_bf16": features.has("onednn_bf16")}
    for name in args.models.split(","):
        for row in measure(name, seeds):
            print(json.dumps({**row, "env": env}), flush=True)


if __name__ == "__main__":
    main()
