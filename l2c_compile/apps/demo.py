"""The end-to-end demo behind `l2c-compile demo`: router → schedule → compile → verify → sample →
benchmark, on the shipped reference model, everything written into one output folder.

Kept in the library (not the CLI) so it can be tested and reused; the CLI only renders progress.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2c_compile import progress
from l2c_compile.errors import L2CError
from l2c_compile.io import check_parents, write_text_atomic

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ROUTERS = ASSETS / "routers"


def shipped_router(model: str, sampler: str, nfe: int, lam: str | None = None) -> Path | None:
    """The router shipped for (model, sampler, NFE), if any: ``assets/routers/<model>-<sampler>-<nfe>[-lam<λ>].safetensors``."""
    stem = f"{model.replace('/', '_')}-{sampler}-{nfe}"
    path = ROUTERS / (f"{stem}-lam{lam}.safetensors" if lam else f"{stem}.safetensors")
    return path if path.is_file() else None


@dataclass
class DemoConfig:
    """What the demo runs (defaults: the shipped DiT reference model, DDIM-20)."""

    model: str = "DiT-FMNIST"
    sampler: str | None = None
    nfe: int = 20
    router: Path | None = None
    threshold: float | None = None
    train_steps: int = 150  # only when no router is shipped or given
    per_class: int = 2
    repeats: int = 3
    seed: int = 0
    out: Path = field(default_factory=lambda: Path("l2c-demo"))


Stage = Callable[[str], None]


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def is_demo_output(path: Path) -> bool:
    """Whether ``path`` is a folder an earlier demo wrote (a report beside an artifact)."""
    return (path / "report.json").is_file() and (path / "artifact").is_dir()


def check_demo_inputs(cfg: DemoConfig) -> None:
    """Every option and the output path, before any work; one L2CError line for the first fault.

    The output may be a new path, an empty folder, or an earlier demo's folder (replaced); an
    existing file or a folder holding anything else is refused and left untouched.
    """
    if cfg.per_class < 1:
        raise L2CError(f"--per-class must be >= 1, got {cfg.per_class}")
    if cfg.repeats < 1:
        raise L2CError(f"--repeats must be >= 1, got {cfg.repeats}")
    if cfg.nfe < 1:
        raise L2CError(f"--nfe must be >= 1, got {cfg.nfe}")
    if cfg.threshold is not None and not 0.0 < cfg.threshold < 1.0:
        raise L2CError(f"--threshold (θ) must be in (0, 1), got {cfg.threshold}")
    if cfg.router is not None and not Path(cfg.router).is_file():
        raise L2CError(f"router file {cfg.router} not found")
    out = Path(cfg.out)
    check_parents(out, "demo")
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise L2CError(f"{out} exists and is not a folder; choose another --out (nothing was written)")
        if any(out.iterdir()) and not is_demo_output(out):
            raise L2CError(
                f"{out} is a folder that an earlier demo did not write; choose another --out "
                "(nothing was written)"
            )


def run_demo(cfg: DemoConfig, stage: Stage = lambda _: None) -> dict[str, Any]:
    """Run every step of the demo; return the report (also written as report.json / report.md).

    Everything is written into a hidden folder beside ``cfg.out`` that replaces it only when the
    whole run succeeded: a failed or interrupted demo leaves nothing behind (and an earlier
    demo's folder as it was). Raises L2CError for bad options (:func:`check_demo_inputs`).
    """
    from l2c_compile.io import atomic_folder, output_lock

    check_demo_inputs(cfg)
    with output_lock(cfg.out):  # before any work: a second demo into the same folder is refused
        check_demo_inputs(cfg)  # again under the lock: another run may have written meanwhile
        with atomic_folder(cfg.out) as tmp:
            return _run_demo(cfg, tmp, stage)


def _run_demo(cfg: DemoConfig, out: Path, stage: Stage) -> dict[str, Any]:
    """The demo's steps, writing into ``out``."""
    import l2c_compile
    from l2c_compile.compiler import reference
    from l2c_compile.images import comparison_figure, save_figure
    from l2c_compile.metrics.macs import timing_note
    from l2c_compile.models.registry import build_model, get_spec, load_checkpoint
    from l2c_compile.runtime.verify import verify_artifact
    from l2c_compile.samplers import make_plan
    from l2c_compile.schedule import default_threshold, import_router, save_heatmap
    from l2c_compile.schedule.summary import schedule_summary

    spec = get_spec(cfg.model)
    if not getattr(spec, "checkpoint", None) or not Path(spec.checkpoint).is_file():
        raise L2CError(f"{spec.name} ships no weights; the demo needs a model with shipped weights")
    stage(f"loading {spec.name}")
    model = build_model(spec)
    load_checkpoint(model, spec.checkpoint)
    sampler = cfg.sampler or spec.default_sampler
    plan = make_plan(sampler, cfg.nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    depth = len(model.transformer_blocks())
    theta = cfg.threshold if cfg.threshold is not None else default_threshold(spec.family)

    router_path = cfg.router or shipped_router(spec.name, sampler, cfg.nfe)
    router_origin = "given" if cfg.router else "shipped"
    if router_path is None:
        from l2c_compile.router import TrainConfig, default_recipe, draw_self_data, train

        stage(f"no shipped router for {sampler}-{cfg.nfe}: training one data-free ({cfg.train_steps} steps)")
        data = draw_self_data(model, plan, spec, size=64, seed=cfg.seed)
        recipe = default_recipe(spec.family)
        tc = TrainConfig(lam=5e-4 if recipe == "dit" else 0.1, lr=1e-2, steps=cfg.train_steps,
                         batch_size=16, seed=cfg.seed, recipe=recipe, checkpoint_every=0)
        router_path = out / "router.safetensors"
        train(model, plan, data, tc, model_name=spec.name, output=router_path)
        router_origin = "trained data-free by the demo"
    stage("importing the router into a schedule")
    sched = import_router(router_path, plan, model=spec.name, depth=depth, threshold=theta)
    sched.save(out / "schedule.json")
    save_heatmap(sched, out / "schedule.png")
    summary = schedule_summary(sched)

    stage("compiling")
    t0 = time.perf_counter()
    compiled = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict())
    compile_s = time.perf_counter() - t0
    compiled.save(out / "artifact")
    uncached_module = l2c_compile.compile(model, plan, None, model_info=spec.to_dict())

    stage("verifying against the reference executor")
    verify = verify_artifact(out / "artifact", batch=2, seed=cfg.seed).to_dict()

    stage("sampling every class, cached and uncached")
    n_cls = spec.num_classes
    labels = torch.arange(n_cls).repeat_interleave(cfg.per_class)  # class-major: row c = class c
    g = torch.Generator().manual_seed(cfg.seed)
    noise = torch.randn(len(labels), *spec.latent_shape, generator=g)
    scale = spec.default_cfg_scale
    with (
        progress.task("sampling every class", 2 * plan.nfe, "model calls"),
        progress.counting_model_calls(compiled),
        progress.counting_model_calls(uncached_module),
    ):
        cached = compiled(noise, labels, scale)
        uncached = uncached_module(noise, labels, scale)
    quality = _quality(spec, cached, uncached, labels)
    # One row per class; the same noise left (uncached) and right (cached).
    names = class_names(spec)
    fig = comparison_figure(
        uncached, cached, names,
        title=f"{spec.name} · {sampler}-{cfg.nfe}\nsame noise left and right, PSNR "
              f"{quality['psnr_cached_vs_uncached_db']:.1f} dB",
        scale=max(1, 64 // spec.latent_shape[-1]),
    )
    save_figure(fig, out / "samples.png")

    stage("timing the four executors")
    batch = len(labels)
    runs = {
        "eager uncached": lambda: reference.sample_uncached(model, plan, noise, labels, scale),
        "eager reference L2C": lambda: reference.sample(model, plan, sched, noise, labels, scale),
        "compiled uncached": lambda: uncached_module(noise, labels, scale),
        "compiled L2C": lambda: compiled(noise, labels, scale),
    }
    total = len(runs) * (cfg.repeats + 1) * plan.nfe  # every run, warm-up included, is a trajectory
    with (
        progress.task("timing the four executors", total, "model calls"),
        progress.counting_model_calls(model),  # the eager runs call the model itself
        progress.counting_model_calls(compiled),
        progress.counting_model_calls(uncached_module),
    ):
        latency = {name: _timed(fn, cfg.repeats) for name, fn in runs.items()}
    base = latency["compiled uncached"]["median_s"]
    for row in latency.values():
        row["speedup_vs_compiled_uncached"] = base / row["median_s"]
    note = timing_note(latency["compiled L2C"]["speedup_vs_compiled_uncached"], summary["ideal_speedup"])

    report = {
        "model": spec.name, "sampler": sampler, "nfe": cfg.nfe, "threshold": theta,
        "router": {"file": str(router_path) if cfg.router or router_origin == "shipped" else "router.safetensors",
                   "origin": router_origin},
        "schedule": {k: summary[k] for k in ("cache_steps", "skipped_attn", "skipped_mlp", "skipped_fraction",
                                              "macs_full", "macs_cached", "ideal_speedup") if k in summary},
        "compile_s": compile_s, "distinct_graphs": compiled.record.distinct_graphs,
        "verify": {k: verify[k] for k in ("max_abs_error", "max_rel_error")},
        "quality": quality, "latency": latency,
        "samples_grid": {"rows": names, "panels": ["uncached", "cached (L2C)"], "per_class": cfg.per_class}, "batch": batch, "cfg_scale": scale,
        "device": "cpu", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "timing_note": note,
    }
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", render_report(report))
    return report


def class_names(spec: Any) -> list[str]:
    """Display names of the model's classes: Fashion-MNIST's for its models, ``class i`` otherwise."""
    from l2c_compile.metrics.quality import has_feature_network

    if has_feature_network(spec):
        from l2c_compile.fmnist.data import CLASS_NAMES

        return list(CLASS_NAMES)
    return [f"class {i}" for i in range(spec.num_classes)]


def _quality(spec, cached: torch.Tensor, uncached: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """PSNR of cached vs same-seed uncached samples; class accuracy where the classifier applies."""
    a, b = cached.clamp(-1, 1).float(), uncached.clamp(-1, 1).float()
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    out: dict[str, Any] = {"samples": len(labels),
                           "psnr_cached_vs_uncached_db": float((10 * torch.log10(4.0 / mse)).mean())}
    if tuple(spec.latent_shape) == (1, 32, 32) and spec.num_classes == 10:
        try:
            from l2c_compile.metrics.quality import class_accuracy

            out["class_accuracy_cached"] = float(class_accuracy(a, labels))
            out["class_accuracy_uncached"] = float(class_accuracy(b, labels))
        except (ImportError, L2CError) as exc:
            out["note"] = f"class accuracy unavailable: {exc}"
    return out


def quality_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, uncached, cached, unit) rows of a demo report's quality, formatted for people."""
    q, s = r["quality"], r["schedule"]
    rows = [("PSNR vs. the same-noise uncached sample", "–",
             f"{q['psnr_cached_vs_uncached_db']:.2f}", "dB")]
    if "class_accuracy_cached" in q:
        rows.append(("class accuracy (Fashion-MNIST classifier)",
                     f"{100 * q['class_accuracy_uncached']:.1f}", f"{100 * q['class_accuracy_cached']:.1f}",
                     f"% of {q['samples']} samples"))
    if "macs_full" in s and "macs_cached" in s:
        rows.append(("MACs per image", f"{s['macs_full'] / 1e9:.3f}", f"{s['macs_cached'] / 1e9:.3f}",
                     "GMAC"))
    return rows


def render_report(r: dict[str, Any]) -> str:
    """The demo report as markdown."""
    s = r["schedule"]
    lines = [
        f"# l2c-compile demo — {r['model']} · {r['sampler']} · NFE {r['nfe']}",
        "",
        f"Router: {r['router']['origin']} (`{Path(r['router']['file']).name}`), θ = {r['threshold']}.",
        f"Schedule: {s.get('cache_steps')} cache steps; skipped {s.get('skipped_attn')} attention and "
        f"{s.get('skipped_mlp')} MLP sublayers ({s.get('skipped_fraction', 0):.1%} of cache-step sublayers); "
        f"MACs/image {s.get('macs_full', 0) / 1e9:.3f} G → {s.get('macs_cached', 0) / 1e9:.3f} G "
        f"(ideal {s.get('ideal_speedup', 0):.3f}×). Heatmap: `schedule.png`.",
        f"Compiled in {r['compile_s']:.1f} s into {r['distinct_graphs']} distinct step graphs (`artifact/sampler.py`).",
        f"Compiled vs reference executor: max relative error {r['verify']['max_rel_error']:.2e}.",
        "",
        "## Quality (`samples.png`: one row per class, uncached left, cached right, same noise)",
        "",
        "| metric | uncached | cached (L2C) | unit |",
        "|---|---|---|---|",
        *(f"| {name} | {full} | {cached} | {unit} |" for name, full, cached, unit in quality_rows(r)),
    ]
    if "note" in r["quality"]:
        lines += ["", f"({r['quality']['note']})"]
    lines += ["", f"## Latency (batch {r['batch']} with CFG, CPU, {r['threads']} threads, torch {r['torch']})", "",
              "| executor | median s | min s | max s | × compiled uncached |", "|---|---|---|---|---|"]
    for name, row in r["latency"].items():
        lines.append(f"| {name} | {row['median_s']:.3f} | {row['min_s']:.3f} | {row['max_s']:.3f} | "
                     f"{row['speedup_vs_compiled_uncached']:.2f} |")
    lines.append(f"\nIdeal (MACs) speedup of the schedule: {s.get('ideal_speedup', 0):.3f}×.")
    if r.get("timing_note"):
        lines.append(f"\nNote: {r['timing_note']}.")
    return "\n".join(lines) + "\n"
