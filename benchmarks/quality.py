"""Sample quality of L2C and its baselines on the Fashion-MNIST models (paper Tables 1, 2, 5, 6, 9).

    python benchmarks/quality.py --list                          # every row, its MACs and removal
    python benchmarks/quality.py --tables 1,9 --samples 500 --seeds 0,1
    python benchmarks/quality.py                                 # everything (hours on one thread)

Tables (each row sampled with l2c-compile's compiled sampler, K class-balanced images per seed):
  1  DiT-FMNIST, DDIM at each NFE: uncached, fewer-step DDIM at the L2C router's MACs, L2C.
  9  Both models at the sweep NFE: the L2C routers of the λ sweep (λ = 0 is the uncached row).
  5  DiT-FMNIST, DDIM-20, everything at the L2C router's removal: random drop, learning-to-drop
     (the drop router thresholded to the same count), random / top / bottom layer caching, L2C,
     and "cache everything every other step" (which removes all it can).
  2  U-ViT-FMNIST, DPM-Solver-2 at each NFE: uncached, fewer-step solver at matched MACs, L2C.
  6  U-ViT-FMNIST, DPM-Solver-2-20, caching every layer with and without shifted cache steps.

Columns: NFE, MACs per image (thop convention), removed cache-step sublayers, FID on the
Fashion-MNIST classifier's features (not Inception: not comparable with published FIDs),
precision, recall, class accuracy, PSNR against the same-seed uncached run at the table's
reference NFE, and seconds per image measured here (median over batches; ratios only mean
something within one run). Headline rows (uncached and L2C at every NFE) run at every
``--seeds``; their FID range over seeds is the seed-to-seed spread printed beside each FID.

Writes ``results/quality.jsonl`` (one self-describing line per row, appended as rows finish,
so ``--resume`` skips what a killed run already did), ``results/quality.md`` and one PNG grid
per table (rows = methods, columns = classes, seed 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, append_text, environment
from quality_tables import TABLES, TITLES, Row, build_rows, macs

import l2c_compile
from l2c_compile.apps.evaluate import (
    DEFAULT_BATCH,
    Samples,
    draw,
    eval_inputs,
    load_model,
    machine,
    make_spec_plan,
    quality,
    require_feature_network,
)
from l2c_compile.errors import L2CError
from l2c_compile.images import make_grid, save_png
from l2c_compile.io import write_text_atomic
from l2c_compile.models.registry import get_spec
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

# ---------------------------------------------------------------------------------------------
# Running: samples are cached by (model, plan, schedule, seed), so shared rows cost nothing
# ---------------------------------------------------------------------------------------------


class Runner:
    """Draws and scores rows; remembers every sample set it drew."""

    def __init__(self, samples: int, batch: int, device: str = "cpu", workers: int = 1) -> None:
        self.samples, self.batch, self.device = samples, batch, torch.device(device)
        self.workers = workers
        self.models: dict[str, Any] = {}
        self.samplers: dict[tuple[str, ...], Any] = {}  # compiled once per configuration
        self.drawn: dict[tuple[str, ...], Samples] = {}
        self.ref_fid: dict[tuple[str, int, int], float] = {}

    def _model(self, name: str) -> tuple[Any, Any]:
        if name not in self.models:
            spec = get_spec(name)
            require_feature_network(spec)
            self.models[name] = (spec, load_model(spec).to(self.device))
        return self.models[name]

    def inputs(self, spec: Any, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The seed's noise and class-balanced labels (identical for every row)."""
        return eval_inputs(self.samples, spec.latent_shape, spec.num_classes, seed)

    def draw(
        self, model_name: str, plan: SamplerPlan, sched: Schedule | None, seed: int
    ) -> Samples:
        """The samples of one configuration and seed, drawn once."""
        text = sched.to_json() if sched is not None else "uncached"
        key = (
            model_name,
            json.dumps(plan.describe()),
            hashlib.sha256(text.encode()).hexdigest(),
            str(seed),
        )
        if key not in self.drawn:
            spec, model = self._model(model_name)
            if key[:3] not in self.samplers:
                self.samplers[key[:3]] = l2c_compile.compile(
                    model, plan, sched, model_info=spec.to_dict()
                )
            noise, labels = self.inputs(spec, seed)
            got = draw(
                self.samplers[key[:3]],
                noise.to(self.device),
                labels.to(self.device),
                spec.default_cfg_scale,
                self.batch,
                self.workers,
            )
            self.drawn[key] = Samples(got.images.cpu(), got.seconds_per_image)
        return self.drawn[key]

    def score(self, row: Row, seed: int) -> tuple[dict[str, float], Samples]:
        """Metrics of one row at one seed (PSNR against the reference-NFE uncached run)."""
        spec, _ = self._model(row.model)
        got = self.draw(row.model, row.plan, row.schedule, seed)
        # The uncached trajectory ignores roles, so the default (shifted) plan is the reference.
        ref = self.draw(row.model, make_spec_plan(spec, row.plan.sampler, row.ref_nfe), None, seed)
        _, labels = self.inputs(spec, seed)
        is_ref = row.schedule is None and row.plan.nfe == row.ref_nfe
        q = quality(got.images, labels, None if is_ref else ref.images)
        ref_key = (row.model, row.ref_nfe, seed)
        if is_ref:
            self.ref_fid[ref_key] = q["fid"]
        elif ref_key not in self.ref_fid:
            self.ref_fid[ref_key] = quality(ref.images, labels)["fid"]
        # Paired: both runs share noise and labels, so most sampling noise cancels in the difference.
        q["fid_delta"] = q["fid"] - self.ref_fid[ref_key]
        return {**q, "latency_s": got.seconds_per_image}, got


def real_floor(samples: int, seeds: list[int]) -> list[float]:
    """FID of ``samples`` real training images (class-balanced draws) per seed: the floor and
    spread a perfect sampler would show at this K."""
    from l2c_compile.fmnist.data import available, load_tensors

    if not available():
        return []
    x, y = load_tensors("train")  # (60000, 1, 32, 32), (60000,)
    out = []
    for seed in seeds:
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:samples]
        out.append(quality(x[idx], y[idx])["fid"])
    return out


def weights_digest(model: str) -> str:
    """Short sha256 of a model's shipped weights: which snapshot the numbers belong to."""
    return hashlib.sha256(Path(get_spec(model).checkpoint).read_bytes()).hexdigest()[:12]


def summarize(
    row: Row, per_seed: dict[int, dict[str, float]], ref_latency: float
) -> dict[str, Any]:
    """One self-describing result line: means over seeds, FID spread, MACs, removal."""
    spec = get_spec(row.model)
    stats = row.schedule.stats() if row.schedule is not None else None
    seeds = sorted(per_seed)
    keys = ("fid", "fid_delta", "precision", "recall", "class_accuracy", "psnr", "latency_s")
    mean = {
        k: statistics.fmean(per_seed[s][k] for s in seeds) for k in keys if k in per_seed[seeds[0]]
    }
    fids = [per_seed[s]["fid"] for s in seeds]
    deltas = [per_seed[s]["fid_delta"] for s in seeds]
    return {
        "table": row.table,
        "model": row.model,
        "method": row.method,
        "sampler": row.plan.sampler,
        "nfe": row.plan.nfe,
        "options": dict(row.plan.options),
        "ref_nfe": row.ref_nfe,
        "mode": row.schedule.mode if row.schedule is not None else None,
        "source": row.schedule.source if row.schedule is not None else None,
        "macs": macs(spec, row.schedule, row.plan.nfe),
        "macs_ref": macs(spec, None, row.ref_nfe),
        "removed": stats["skipped_total"] if stats else 0,
        "removable": stats["total_cache_sublayers"] if stats else None,
        **mean,
        "fid_spread": max(fids) - min(fids) if len(fids) > 1 else None,
        "fid_delta_spread": max(deltas) - min(deltas) if len(deltas) > 1 else None,
        "per_seed": {str(s): per_seed[s] for s in seeds},
        "speedup_measured": ref_latency / mean["latency_s"],
        "seeds": seeds,
        "key": row.key,
    }


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and v == float("inf"):
        return "∞"
    return format(v, spec)


def _pm(value: float | None, spread: float | None) -> str:
    """``value ± half its range over seeds`` (just the value for one seed)."""
    return _fmt(value, ".2f") + (f" ± {spread / 2:.2f}" if spread is not None else "")


def render_markdown(results: list[dict[str, Any]], header: str) -> str:
    """All tables as markdown, in TABLES order."""
    out = [header]
    for t in TABLES:
        rows = [r for r in results if r["table"] == t]
        if not rows:
            continue
        out += [
            "",
            f"## {TITLES[t]}",
            "",
            "| method | NFE | MACs/img (G) | removed | FID | ΔFID vs uncached (paired) | precision "
            "| recall | class acc. | PSNR vs uncached (dB) | s/img | speedup (measured) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            removed = f"{r['removed']}/{r['removable']}" if r["removable"] else "0"
            out.append(
                f"| {r['method']} | {r['nfe']} | {r['macs'] / 1e9:.2f} | {removed} "
                f"| {_pm(r['fid'], r['fid_spread'])} | {_pm(r['fid_delta'], r['fid_delta_spread'])} "
                f"| {_fmt(r['precision'], '.3f')} | {_fmt(r['recall'], '.3f')} "
                f"| {_fmt(r['class_accuracy'], '.3f')} | {_fmt(r.get('psnr'), '.1f')} "
                f"| {r['latency_s']:.3f} | {r['speedup_measured']:.2f}× |"
            )
        refs = sorted({r["ref_nfe"] for r in rows}, reverse=True)
        grids = ", ".join(f"`{grid_name(t, n)}`" for n in refs)
        out += [
            "",
            f"ΔFID and PSNR compare with the uncached sampler at the same NFE as L2C, at the same "
            f"seeds. Samples: {grids} (rows in table order, one column per class, seed "
            f"{rows[0]['seeds'][0]}).",
        ]
    return "\n".join(out) + "\n"


def grid_name(table: str, ref_nfe: int) -> str:
    """File name of the sample grid of one table's rows at one reference NFE."""
    return f"quality-table{table}-nfe{ref_nfe}.png"


def save_grids(
    rows: list[Row], images: dict[str, torch.Tensor], runner: Runner, seed: int, out: Path
) -> None:
    """One grid per (table, reference NFE) whose rows were all drawn in this run: rows = methods
    in table order, columns = the first sample of each class at ``seed``."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.table, r.ref_nfe), []).append(r)
    for (table, ref_nfe), group in groups.items():
        if not all(r.key in images for r in group):
            continue  # partly resumed: keep the grid an earlier run wrote
        labels = runner.inputs(get_spec(group[0].model), seed)[1]
        firsts = [int((labels == c).nonzero()[0]) for c in range(int(labels.max()) + 1)]
        pics = torch.cat([images[r.key][firsts] for r in group])  # (rows·classes, C, H, W)
        save_png(make_grid(pics, ncol=len(firsts), scale=2), out / grid_name(table, ref_nfe))


def _load_done(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            done[r["key"]] = r
    return done


FRONT_HEADER = (
    "# Cost–quality fronts on the Fashion-MNIST models (issue 25)\n\n"
    "Every point at every listed seed, on the same seeded noise and class-balanced labels. "
    "Values are mean [min, max] over seeds. ΔFID and PSNR compare with the uncached sampler "
    "at the front's NFE and the same seed (paired). The last two columns are each point "
    "minus the fewer-steps curve at the same MACs (linear between step counts), per seed; "
    "**better**/**worse** when every seed agrees, **tie** otherwise. FID uses the "
    "Fashion-MNIST classifier's features (not Inception)."
)


def front(args: argparse.Namespace) -> None:
    """``--front``: sample the fronts' points seed-major, then rebuild their report."""
    from quality_front import run_front, write_report
    from quality_tables import front_rows

    extra = dict(item.split("=", 1) for item in args.front_router)
    rows = []
    for item in args.front.split(","):
        model, nfe = item.rsplit(":", 1)
        rows += front_rows(model, int(nfe), extra={k: Path(v) for k, v in extra.items()})
    skip = {v for v in args.front_skip.split(",") if v}
    rows = [r for r in rows if r.method not in skip]
    if args.list:
        for r in rows:
            print(
                f"{r.model:14s} {r.method:32s} NFE {r.plan.nfe:3d} "
                f"MACs {macs(get_spec(r.model), r.schedule, r.plan.nfe) / 1e9:6.3f} G"
            )
        return
    out = Path(args.out)
    jsonl = out / "quality-front.jsonl"
    if args.report_only:  # what is measured so far, no sampling
        write_report(jsonl, out, FRONT_HEADER)
        return
    if not args.resume:
        write_text_atomic(jsonl, "")
    runner = Runner(args.samples, args.batch, args.device, args.workers)
    env = {
        **environment(args.device),
        "threads": args.threads,
        "batch": args.batch,
        "cpu": machine()["cpu"],
    }
    run_front(rows, runner, [int(s) for s in args.seeds.split(",") if s], jsonl, env, args.deadline)
    write_report(jsonl, out, FRONT_HEADER)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", default=",".join(TABLES), help="comma-separated: 1,9,5,2,6")
    p.add_argument("--samples", type=int, default=500, help="K images per row and seed")
    p.add_argument("--seeds", default="0,1", help="seeds of the headline rows (others: the first)")
    p.add_argument("--all-seeds", action="store_true", help="every row at every seed")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="images per sampler call")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (each of several --workers uses one)",
    )
    p.add_argument(
        "--workers", type=int, default=1, help="batches sampled at once (one thread each)"
    )
    p.add_argument("--device", default="cpu", help="where the samplers run (metrics: CPU)")
    p.add_argument("--dit", default="DiT-FMNIST")
    p.add_argument("--uvit", default="U-ViT-FMNIST")
    p.add_argument("--dit-nfes", default="50,20,10")
    p.add_argument("--uvit-nfes", default="20,10")
    p.add_argument("--sweep-nfe", type=int, default=20, help="NFE of Tables 5, 6 and 9")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--resume", action="store_true", help="skip rows already in quality.jsonl")
    p.add_argument(
        "--deadline", type=float, default=None, help="start no row after this many seconds"
    )
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    p.add_argument(
        "--front",
        default="",
        help="MODEL:NFE[,…]: the cost–quality fronts of issue 25 instead of the tables "
        "(quality_front.py; every point at every --seeds, seed-major)",
    )
    p.add_argument(
        "--front-router",
        action="append",
        default=[],
        help="LABEL=FILE: one more router on the fronts of its model and NFE (repeatable)",
    )
    p.add_argument(
        "--front-skip", default="", help="comma-separated front point names to leave out"
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="with --front: rebuild quality-front.md and the plots from the rows already measured",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.front:
        front(args)
        return
    ints = lambda s: [int(v) for v in s.split(",") if v]  # noqa: E731
    rows = []
    for table in args.tables.split(","):
        try:  # one table's missing router must not cost the others their rows
            rows += build_rows(
                [table],
                args.dit,
                args.uvit,
                ints(args.dit_nfes),
                ints(args.uvit_nfes),
                args.sweep_nfe,
            )
        except L2CError as exc:
            print(f"table {table} skipped: {exc}", flush=True)
    if args.list:
        for r in rows:
            s = r.schedule.stats() if r.schedule is not None else {"skipped_total": 0}
            print(
                f"T{r.table} {r.model:14s} {r.method:30s} NFE {r.plan.nfe:3d} "
                f"MACs {macs(get_spec(r.model), r.schedule, r.plan.nfe) / 1e9:6.2f} G removed {s['skipped_total']}"
            )
        return
    out = Path(args.out)
    jsonl = out / "quality.jsonl"
    done = _load_done(jsonl) if args.resume else {}
    if not args.resume and not args.report_only:  # a report of what is measured keeps every row
        write_text_atomic(jsonl, "")
    seeds = ints(args.seeds)
    runner = Runner(args.samples, args.batch, args.device, args.workers)
    env = {
        **environment(args.device),
        "threads": args.threads,
        "workers": args.workers,
        "batch": args.batch,
        "cpu": machine()["cpu"],
    }
    start = time.monotonic()
    results = list(done.values())
    images: dict[str, torch.Tensor] = {}
    for row in rows:
        if row.key in done:
            continue
        if args.deadline is not None and time.monotonic() - start > args.deadline:
            print(f"deadline reached; stopped before {row.key}", flush=True)
            break
        t0 = time.monotonic()
        per_seed = {}
        for seed in seeds if (row.headline or args.all_seeds) else seeds[:1]:
            per_seed[seed], got = runner.score(row, seed)
            if seed == seeds[0]:
                images[row.key] = got.images
        spec = get_spec(row.model)
        ref_plan = make_spec_plan(spec, row.plan.sampler, row.ref_nfe)
        ref_latency = runner.draw(row.model, ref_plan, None, seeds[0]).seconds_per_image
        result = {**summarize(row, per_seed, ref_latency), "samples": args.samples, "env": env}
        results.append(result)
        append_text(jsonl, json.dumps(result, default=str) + "\n")
        print(
            f"[{time.monotonic() - start:6.0f} s] T{row.table} {row.method} NFE {row.plan.nfe}: "
            f"FID {result['fid']:.2f} PSNR {_fmt(result.get('psnr'), '.1f')} ({time.monotonic() - t0:.0f} s)",
            flush=True,
        )
    floor = real_floor(args.samples, seeds)
    digests = ", ".join(f"{m} `{weights_digest(m)}`" for m in dict.fromkeys(r.model for r in rows))
    header = (
        f"# Sample quality on the Fashion-MNIST models\n\nWeights (sha256): {digests}. "
        + (
            f"FID floor: {args.samples} real training images score "
            f"{', '.join(f'{f:.2f}' for f in floor)} at seeds {seeds}."
            if floor
            else ""
        )
        + "\n\n"
        f"K = {args.samples} images per row and seed, "
        f"class-balanced; headline rows at seeds {seeds}, others at seed {seeds[0]}; ± is half the "
        f"range over seeds (the seed-to-seed spread). FID, precision and "
        f"recall use the Fashion-MNIST classifier's features (not Inception). Latency: {env['device_name']}, "
        f"torch {env['torch']}, git {env['git']}."
    )
    order = {r.key: i for i, r in enumerate(rows)}
    results.sort(key=lambda r: order.get(r["key"], len(order)))
    write_text_atomic(out / "quality.md", render_markdown(results, header))
    save_grids(rows, images, runner, seeds[0], out)


if __name__ == "__main__":
    main()
