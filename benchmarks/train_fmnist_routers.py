"""Train the routers shipped for the Fashion-MNIST reference models, with the settings recorded.

    python benchmarks/train_fmnist_routers.py                    # every router in JOBS
    python benchmarks/train_fmnist_routers.py --list             # what would be trained
    python benchmarks/train_fmnist_routers.py --only DiT-FMNIST-ddim-20 --steps 100 --dry-run
    python benchmarks/train_fmnist_routers.py --sweep DiT-FMNIST-ddim-20 --lams 1e-4,3e-4,1e-3
    python benchmarks/train_fmnist_routers.py --only DiT-FMNIST-ddim-20 --grid 1e-4,3e-4 --device cuda

Each router is trained with :func:`l2c_compile.router.train` on the Fashion-MNIST training images
(in memory, the "tensors" data source) and written to
``l2c_compile/assets/routers/<model>-<sampler>-<nfe>[-<tag>].safetensors`` (its metadata holds
every training setting) with the schedule it gives at the family's θ beside it (``.json``). One
summary line per router (final loss, skipped share, wall time) is appended to
``benchmarks/results/fmnist_routers.jsonl``.

Shards: a training step draws one cache call per shard (like one per GPU in the official DDP
runs), so ``--shards 8`` with batch 16 updates up to 8 router rows per step with 2 images each;
a router with R trained rows then sees about ``steps · shards / R`` updates per row.
``--sweep`` trains without writing routers and prints the skipped share per λ — how the λ values
of the NFE-20 sweep below were picked (the paper's 5e-6 is for DiT-XL/2 on 4×32×32 latents).
``--grid`` trains and writes each selected cache-mode job at every given λ instead of its own,
tagged ``lam<λ>``: one run that leaves a router per λ to choose the defaults from.

``--long SAMPLES`` trains the selected jobs further, with their own settings and seed (so the first
``job.steps`` steps are the shipped router's), towards SAMPLES training images each: in segments
of ``--segment`` steps, taking the jobs in turn, each segment resumed from the last checkpoint.
One curve line per segment (samples seen, wall time, peak RSS, mean distance, skip share at θ)
is appended to ``--curve``; ``--minutes`` bounds one invocation, and rerunning continues.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment, read_jsonl

from l2c_compile.apps.demo import ROUTERS
from l2c_compile.apps.evaluate import load_model
from l2c_compile.errors import L2CError
from l2c_compile.io import write_text_atomic
from l2c_compile.models.registry import get_spec
from l2c_compile.models.select import make_spec_plan
from l2c_compile.router import RECIPES, TrainConfig, checkpoint_path, default_recipe, train
from l2c_compile.router.checkpoint import checkpoint_step
from l2c_compile.router.data import TensorData
from l2c_compile.router.train import LAM_SCHEDULES
from l2c_compile.schedule import default_threshold, import_router


@dataclass(frozen=True)
class Job:
    """One router to train: model, sampler, NFE, λ, mode and the file-name tag."""

    model: str
    sampler: str
    nfe: int
    lam: float
    mode: str = "cache"
    tag: str = ""  # "" for the default router of (model, sampler, NFE); "lam<λ>" or "drop"
    steps: int = 200  # the skipped share settles by then at NFE 10 and 20
    objective: str = "step"  # or "trajectory": the final sample's error (after HarmoniCa)
    lam_schedule: str = "constant"  # or "rising" / "falling": λ over the cache steps

    @property
    def name(self) -> str:
        """``<model>-<sampler>-<nfe>[-<tag>]``, the file stem."""
        return f"{self.model}-{self.sampler}-{self.nfe}" + (f"-{self.tag}" if self.tag else "")


# λ for the 6-block DiT-FMNIST / 7-block U-ViT-FMNIST (patch 4), from one --grid run at NFE 20
# (200 steps, lr 0.1, batch 16 over 8 shards; share of cache-step sublayers skipped at θ = 0.1 / 0.9,
# benchmarks/results/fmnist_routers.jsonl):
#   DiT   λ = 1e-5: 17 %   3e-5: 37 %   1e-4: 72 %   3e-4: 89 %   1e-3: 90 %
#   U-ViT λ = 1e-3: 14 %   3e-3: 16 %   1e-2: 23 %   3e-2: 34 %   0.1: 56 %
# The default λ is the one closest to the released DiT DDIM-20 router's 44 % among those ≥ 30 %
# (choose_defaults). The DiT recipe's distance is a mean over 1×32×32 pixels, the U-ViT recipe's a
# per-sample sum (1,024× larger), hence the scales; the paper's 5e-6 / 0.1 are for 4×32×32 latents.
DIT_LAM = 3e-5
DIT_SWEEP = (1e-5, 1e-4, 3e-4, 1e-3)  # with DIT_LAM: the λ sweep of Table 9
UVIT_LAM = 0.03
UVIT_SWEEP = (1e-3, 3e-3, 1e-2, 0.1)
STEPS_50 = 400  # 25 router rows: twice the steps for a similar number of updates per row
JOBS: tuple[Job, ...] = (
    Job("DiT-FMNIST", "ddim", 10, DIT_LAM),
    Job("DiT-FMNIST", "ddim", 20, DIT_LAM),
    Job("DiT-FMNIST", "ddim", 50, DIT_LAM, steps=STEPS_50),
    *(Job("DiT-FMNIST", "ddim", 20, lam, tag=f"lam{lam:g}") for lam in DIT_SWEEP),
    # learning-to-drop at the λ it was trained with (Table 5 thresholds it to L2C's removal)
    Job("DiT-FMNIST", "ddim", 20, 1e-4, mode="drop", tag="drop"),
    Job("U-ViT-FMNIST", "dpm-solver-2", 10, UVIT_LAM),
    Job("U-ViT-FMNIST", "dpm-solver-2", 20, UVIT_LAM),
    Job("U-ViT-FMNIST", "dpm-solver-2", 50, UVIT_LAM, steps=STEPS_50),
    *(Job("U-ViT-FMNIST", "dpm-solver-2", 20, lam, tag=f"lam{lam:g}") for lam in UVIT_SWEEP),
    Job("U-ViT-FMNIST", "dpm-solver-2", 20, 3e-3, mode="drop", tag="drop"),
)


def fmnist_train_data() -> TensorData:
    """The 60,000 Fashion-MNIST training images (1×32×32 in [-1, 1]) with their labels."""
    from l2c_compile.fmnist.data import load_tensors

    x, y = load_tensors("train")  # (60000, 1, 32, 32), (60000,)
    return TensorData(x, y, f"Fashion-MNIST train (images, {len(x)} samples)")


def train_job(
    job: Job,
    data: TensorData,
    *,
    batch: int,
    shards: int,
    lr: float,
    seed: int,
    out_dir: Path | None,
    steps: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train one router (written to ``out_dir`` unless None) and return its summary row."""
    spec = get_spec(job.model)
    model = load_model(spec).to(device)
    plan = make_spec_plan(spec, job.sampler, job.nfe)
    recipe = default_recipe(spec.family)
    trajectory = job.objective == "trajectory"
    config = TrainConfig(
        lam=job.lam,
        lr=lr,
        steps=steps or job.steps,
        batch_size=batch,
        seed=seed,
        recipe=recipe,
        mode=job.mode,
        shards=shards,
        checkpoint_every=0,
        objective=job.objective,
        lam_schedule=job.lam_schedule,
        cfg_scale=spec.default_cfg_scale if trajectory else None,  # sample as the evaluation does
    )
    path = out_dir / f"{job.name}.safetensors" if out_dir is not None else None
    t0 = time.perf_counter()
    result = train(model, plan, data, config, model_name=spec.name, output=path)
    seconds = time.perf_counter() - t0
    if path is not None:
        checkpoint_path(path).unlink(missing_ok=True)  # resumable training state: not shipped
    theta = default_threshold(spec.family)
    tail = result.history[-max(1, len(result.history) // 10) :]  # the last tenth, smoothed
    row: dict[str, Any] = {
        "router": job.name,
        **asdict(job),
        "steps": config.steps,  # what was trained: ``--steps`` overrides the job's
        "config": config.to_dict(),
        "theta": theta,
        "final_distance": sum(r["distance"] for r in tail) / len(tail),
        "final_skip": result.history[-1]["skip"],
        "skip_at_half": result.history[len(result.history) // 2]["skip"],
        "seconds": seconds,
        "process_peak_rss_mb": peak_rss_mb(),  # this process's high-water mark, every job so far
        "data": data.description,
    }
    if path is not None:
        depth = len(model.transformer_blocks())
        sched = import_router(path, plan, model=spec.name, depth=depth, threshold=theta)
        sched.save(path.with_suffix(".json"))
        row["schedule"] = {k: v for k, v in sched.stats().items() if k != "nfe"}
    return row


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _last_curve_row(curve: Path, router: str) -> dict[str, Any] | None:
    rows = [r for r in read_jsonl(curve) if r.get("router") == router] if curve.is_file() else []
    return rows[-1] if rows else None


def train_long(
    jobs: list[Job],
    data: TensorData,
    *,
    samples: int,
    segment: int,
    minutes: float,
    out_dir: Path,
    curve: Path,
    batch: int,
    shards: int,
    lr: float,
    seed: int,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train ``jobs`` in turn, ``segment`` steps at a time, until each has seen ``samples`` images
    or ``minutes`` have passed; every segment resumes the job's checkpoint in ``out_dir``.

    A copy of each router is kept as it stood after ``job.steps`` steps (``-s<samples>``: the
    shipped router's length). Returns the curve lines written by this call.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    total = -(-samples // batch)  # steps
    models: dict[str, Any] = {}
    written: list[dict[str, Any]] = []
    t_start = time.monotonic()
    active = list(jobs)
    while active and time.monotonic() - t_start < minutes * 60:
        for job in list(active):
            path = out_dir / f"{job.name}.safetensors"
            done = checkpoint_step(checkpoint_path(path)) or 0
            if done >= total:
                active.remove(job)
                continue
            if time.monotonic() - t_start >= minutes * 60:
                break
            spec = get_spec(job.model)
            if job.model not in models:
                models[job.model] = load_model(spec).to(device)
            plan = make_spec_plan(spec, job.sampler, job.nfe)
            stop = min(done + segment, total)
            if done < job.steps < stop:
                stop = job.steps  # a segment boundary at the shipped length, for the snapshot
            config = TrainConfig(
                lam=job.lam,
                lr=lr,
                steps=stop,
                batch_size=batch,
                seed=seed,
                recipe=default_recipe(spec.family),
                mode=job.mode,
                shards=shards,
                checkpoint_every=0,
            )
            t0 = time.perf_counter()
            result = train(
                models[job.model],
                plan,
                data,
                config,
                model_name=spec.name,
                output=path,
                resume=done > 0,
            )
            seconds = time.perf_counter() - t0
            seg = result.history[done:]
            last = _last_curve_row(curve, job.name)
            row = {
                "router": job.name,
                "lam": job.lam,
                "lr": lr,
                "batch": batch,
                "shards": shards,
                "seed": seed,
                "step": stop,
                "samples": stop * batch,
                "epochs": stop * batch / len(data),
                "distance": sum(r["distance"] for r in seg) / len(seg),
                "loss": sum(r["loss"] for r in seg) / len(seg),
                "skip": seg[-1]["skip"],
                "theta": config.theta,
                "segment_s": seconds,
                "wall_s": (last["wall_s"] if last and last["step"] < stop else 0.0) + seconds,
                "s_per_step": seconds / len(seg),
                "peak_rss_mb": peak_rss_mb(),
                "threads": torch.get_num_threads(),
            }
            append_text(curve, json.dumps(row) + "\n")
            written.append(row)
            print(
                f"{job.name}: step {stop}/{total} ({row['epochs']:.3f} epoch) distance "
                f"{row['distance']:.4g} skip {row['skip']:.1%} {row['s_per_step']:.2f} s/step",
                flush=True,
            )
            if stop == job.steps:
                for suffix in (".safetensors", ".safetensors.ckpt"):
                    src = out_dir / f"{job.name}{suffix}"
                    shutil.copyfile(src, out_dir / f"{job.name}-s{stop * batch}{suffix}")
    return written


def curve_markdown(rows: list[dict[str, Any]]) -> str:
    """The ``--long`` curve lines as one markdown table per router."""
    out = []
    for router in dict.fromkeys(r["router"] for r in rows):
        mine = [r for r in rows if r["router"] == router]
        out += [
            f"### {router} (λ {mine[0]['lam']:g}, lr {mine[0]['lr']:g}, batch {mine[0]['batch']} "
            f"over {mine[0]['shards']} shards, seed {mine[0]['seed']}, θ {mine[0]['theta']:g})",
            "",
            "| samples seen | epochs | distance (segment mean) | skip at θ | wall (s) | s/step | peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|",
            *(
                f"| {r['samples']} | {r['epochs']:.3f} | {r['distance']:.3g} | {r['skip']:.1%} "
                f"| {r['wall_s']:.0f} | {r['s_per_step']:.2f} | {r['peak_rss_mb']:.0f} |"
                for r in mine
            ),
            "",
        ]
    return "\n".join(out)


def schedule_diff(a: Any, b: Any) -> list[str]:
    """The sublayers one schedule reuses and the other computes, as ``call <i> (router row r):
    <kind> <block> reused by a|b`` lines; empty when the two skip the same sublayers."""
    out = []
    for ca, cb in zip(a.cache_calls, b.cache_calls, strict=True):
        for kind in ("attn", "mlp"):
            ra, rb = set(ca.reused(kind)), set(cb.reused(kind))
            for block in sorted(ra ^ rb):
                who = "a" if block in ra else "b"
                out.append(
                    f"call {ca.index} (row {ca.router_index}): {kind} {block} reused by {who}"
                )
    return out


def router_cost(
    model_name: str, batches: list[int], steps: int, *, sampler: str = "ddim", nfe: int = 20
) -> list[dict[str, Any]]:
    """Seconds per router-training step and peak RSS of ``model_name`` with random weights and
    random latents (one shard, the family's recipe at the paper's λ, lr 1e-3), per batch size.

    One step of DiT-Tiny first pays the one-time costs (lazy imports); then runs of 1 and of
    ``steps + 1`` steps are timed and their difference is ``steps`` steps without the per-run
    setup. The peak RSS is the process's (run it in a fresh process): it includes the model.
    """
    from l2c_compile.models.registry import build_model, init_random

    def run(model: Any, spec: Any, batch: int, n: int) -> float:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((batch * n, *spec.latent_shape), generator=gen)
        y = torch.randint(spec.num_classes, (len(x),), generator=gen)
        recipe = default_recipe(spec.family)
        config = TrainConfig(
            lam=RECIPES[recipe].lam,
            lr=1e-3,
            steps=n,
            batch_size=batch,
            seed=0,
            recipe=recipe,
            shards=1,
            checkpoint_every=0,
        )
        plan = make_spec_plan(spec, sampler, nfe)
        t0 = time.perf_counter()
        train(model, plan, TensorData(x, y, "random latents"), config, model_name=spec.name)
        return time.perf_counter() - t0

    tiny = get_spec("DiT-Tiny")
    run(init_random(build_model(tiny)), tiny, 1, 1)
    spec = get_spec(model_name)
    rss0 = peak_rss_mb()
    model = init_random(build_model(spec)).eval()
    rss_model = peak_rss_mb()
    rows = []
    for batch in batches:
        one = run(model, spec, batch, 1)
        more = run(model, spec, batch, steps + 1)
        row = {
            "model": spec.name,
            "sampler": sampler,
            "nfe": nfe,
            "batch": batch,
            "steps_timed": steps,
            "s_first_run": one,
            "s_per_step": (more - one) / steps,
            "s_per_sample": (more - one) / steps / batch,
            "peak_rss_mb": peak_rss_mb(),
            "rss_before_model_mb": rss0,
            "rss_after_model_mb": rss_model,
            "threads": torch.get_num_threads(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def choose_defaults(folder: Path, target: float = 0.45, floor: float = 0.30) -> dict[str, float]:
    """Per model, promote the λ of a ``--grid`` run to the default routers.

    Among the λ trained at every NFE, the one whose NFE-20 router skips the share of cache-step sublayers closest to ``target`` (the
    released DiT DDIM-20 router skips 44 %), among those skipping at least ``floor``, is chosen;
    its ``lam<λ>`` files at every NFE are renamed to the untagged default names. The other λ stay
    tagged (the λ sweep of Table 9). Returns {model: chosen λ}.
    """
    from l2c_compile.schedule import Schedule

    chosen: dict[str, float] = {}
    for model in sorted({j.model for j in JOBS}):
        sampler = next(j.sampler for j in JOBS if j.model == model)
        shares = {}
        for path in folder.glob(f"{model}-{sampler}-20-lam*.json"):
            lam = float(path.stem.rsplit("-lam", 1)[1])
            shares[lam] = Schedule.load(path).stats()["skipped_fraction"]
        nfes = {j.nfe for j in JOBS if j.model == model and j.mode == "cache"}
        everywhere = {
            lam
            for lam in shares
            if all((folder / f"{model}-{sampler}-{n}-lam{lam:g}.json").is_file() for n in nfes)
        }
        ok = {lam: share for lam, share in shares.items() if share >= floor and lam in everywhere}
        if not ok:  # keep the tables buildable; the shortfall is printed, not hidden
            ok = {lam: share for lam, share in shares.items() if lam in everywhere}
            if not ok:
                print(f"{model}: no λ was trained at every NFE {sorted(nfes)}", flush=True)
                continue
            print(f"{model}: WARNING no λ skips {floor:.0%} at NFE 20; the most skipping kept")
            ok = {max(ok, key=ok.__getitem__): max(ok.values())}
        lam = min(ok, key=lambda v: abs(ok[v] - target))
        chosen[model] = lam
        for path in folder.glob(f"{model}-{sampler}-*-lam{lam:g}.*"):
            new = path.rename(path.with_name(path.name.replace(f"-lam{lam:g}", "")))
            if new.suffix == ".json":  # the schedule names the router file it came from
                text = new.read_text(encoding="utf-8")
                write_text_atomic(new, text.replace(f"-lam{lam:g}.safetensors", ".safetensors"))
        print(
            f"{model}: default λ = {lam:g} (NFE-20 skip {ok[lam]:.1%}; grid {shares})", flush=True
        )
    return chosen


def _select(names: list[str] | None) -> list[Job]:
    if not names:
        return list(JOBS)
    by_name = {j.name: j for j in JOBS}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise L2CError(f"unknown router {unknown[0]!r}; see --list")
    return [by_name[n] for n in names]


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", help="router names (see --list)")
    p.add_argument("--list", action="store_true", help="print the jobs and exit")
    p.add_argument("--steps", type=int, default=None, help="override every job's step count")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.1, help="high: few hundred steps, not 20k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--sweep", default=None, help="a job name: train it at each --lams, write nothing"
    )
    p.add_argument("--lams", default="", help="comma-separated λ values for --sweep")
    p.add_argument("--grid", default="", help="comma-separated λ values: each job at each λ")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    p.add_argument(
        "--choose-defaults", action="store_true", help="after a --grid run: promote one λ per model"
    )
    p.add_argument("--dry-run", action="store_true", help="train but write no router")
    p.add_argument(
        "--objective",
        default="step",
        choices=("step", "trajectory"),
        help="--sweep / --grid: the one-step target (Algorithm 1) or the final sample (HarmoniCa); "
        "trajectory routers are tagged traj-lam<λ>",
    )
    p.add_argument(
        "--lam-schedule",
        default="constant",
        choices=LAM_SCHEDULES,
        help="--sweep / --grid: λ over the cache steps (train --lam-schedule); a ramp's routers "
        "are tagged <schedule>-lam<λ>",
    )
    p.add_argument("--long", type=int, default=0, help="train --only jobs towards this many images")
    p.add_argument("--segment", type=int, default=50, help="--long: steps between curve lines")
    p.add_argument("--minutes", type=float, default=100.0, help="--long: wall budget of this call")
    p.add_argument("--curve", default=str(RESULTS / "fmnist_routers_long.jsonl"))
    p.add_argument("--curve-report", action="store_true", help="write --curve as markdown (.md)")
    p.add_argument(
        "--cost", default="", help="a model name: time router-training steps, random weights"
    )
    p.add_argument("--cost-batches", default="1,2", help="--cost: batch sizes")
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("A", "B"),
        help="router files of one --only job: "
        "the sublayers their schedules at the family's θ disagree on",
    )
    p.add_argument("--out", default=str(ROUTERS))
    p.add_argument("--log", default=str(RESULTS / "fmnist_routers.jsonl"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.list:
        for j in JOBS:
            print(f"{j.name:40s} λ={j.lam:g} mode={j.mode} steps={j.steps}")
        return
    if args.choose_defaults:
        choose_defaults(Path(args.out))
        return
    if args.curve_report:
        curve = Path(args.curve)
        write_text_atomic(curve.with_suffix(".md"), curve_markdown(read_jsonl(curve)))
        return
    if args.diff:
        (job,) = _select(args.only)
        spec = get_spec(job.model)
        plan = make_spec_plan(spec, job.sampler, job.nfe)
        a, b = (
            import_router(
                f,
                plan,
                model=spec.name,
                depth=len(load_model(spec).transformer_blocks()),
                threshold=default_threshold(spec.family),
            )
            for f in args.diff
        )
        lines = schedule_diff(a, b)
        print(
            f"a: {a.stats()['skipped_total']} reused, b: {b.stats()['skipped_total']} reused, "
            f"{len(lines)} differ",
            *lines,
            sep="\n",
        )
        return
    if args.cost:
        env = environment(args.device)
        for row in router_cost(
            args.cost, [int(b) for b in args.cost_batches.split(",")], args.steps or 2
        ):
            append_text(RESULTS / "router_cost.jsonl", json.dumps({**row, "env": env}) + "\n")
        return
    data = fmnist_train_data()
    if args.long:
        train_long(
            _select(args.only),
            data,
            samples=args.long,
            segment=args.segment,
            minutes=args.minutes,
            out_dir=Path(args.out),
            curve=Path(args.curve),
            batch=args.batch,
            shards=args.shards,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
        )
        return
    common = dict(
        batch=args.batch,
        shards=args.shards,
        lr=args.lr,
        seed=args.seed,
        steps=args.steps,
        device=args.device,
    )
    if args.sweep:
        (base,) = _select([args.sweep])
        for lam in [float(v) for v in args.lams.split(",") if v]:
            job = Job(
                base.model, base.sampler, base.nfe, lam, base.mode, steps=base.steps,
                objective=args.objective, lam_schedule=args.lam_schedule,
            )
            row = train_job(job, data, out_dir=None, **common)
            print(
                f"λ={lam:g}: skip {row['final_skip']:.1%} (half-way {row['skip_at_half']:.1%}) "
                f"distance {row['final_distance']:.3g} in {row['seconds']:.0f} s",
                flush=True,
            )
        return
    out = None if args.dry_run else Path(args.out)
    env = environment(args.device)
    rows = []
    jobs = _select(args.only)
    if args.grid:
        lams = [float(v) for v in args.grid.split(",") if v]
        prefix = ("traj-" if args.objective == "trajectory" else "") + (
            f"{args.lam_schedule}-" if args.lam_schedule != "constant" else ""
        )
        jobs = [
            replace(
                j, lam=lam, tag=f"{prefix}lam{lam:g}", objective=args.objective,
                lam_schedule=args.lam_schedule,
            )
            if j.mode == "cache"
            else j
            for j in jobs
            for lam in (lams if j.mode == "cache" else [j.lam])
        ]
    for job in jobs:
        row = {**train_job(job, data, out_dir=out, **common), "env": env}
        rows.append(row)
        print(f"{job.name}: skip {row['final_skip']:.1%} in {row['seconds']:.0f} s", flush=True)
        if out is not None:
            log = Path(args.log)
            append_text(log, json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
