"""`l2c-compile eval`: sample quality of a schedule against the same-seed uncached sampler.

Under ``torchrun --nproc_per_node K -m l2c_compile.cli.main eval ...`` the K ranks share the
samples (gloo on CPU, NCCL with one GPU per rank); only rank 0 prints and writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from l2c_compile.cli.common import (
    CFG_SCALE_HELP,
    OutputFormat,
    cli_errors,
    console,
    print_json,
    print_labelled,
    progress_bars,
)


@cli_errors
def eval_cmd(
    model: str = typer.Option(
        ..., "--model", "-m", help="a Fashion-MNIST model (DiT-FMNIST, U-ViT-FMNIST)"
    ),
    sampler: str | None = typer.Option(
        None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)"
    ),
    nfe: int = typer.Option(..., "--nfe", help="number of model calls"),
    schedule: Path | None = typer.Option(
        None, "--schedule", help="schedule JSON or router file (default: the shipped router)"
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="θ for a router (default: the family's)"
    ),
    samples: int = typer.Option(
        1000, "--samples", "-k", help="images per sampler, balanced over classes"
    ),
    seed: int = typer.Option(0, "--seed", help="seed of the noise and label order"),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale", help=CFG_SCALE_HELP),
    batch: int | None = typer.Option(None, "--batch", help="images per sampler call (default: 16)"),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="batches sampled at once, one CPU thread each (default: torch's thread count; 1 on GPUs)",
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda (default: cpu; under torchrun: each rank's GPU if any)"
    ),
    backend: str | None = typer.Option(
        None, "--backend", help="eager | regional | inductor (default: regional on CPU, else eager)"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="also write the report here (JSON)"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Sample K images with a schedule and without, and score both (FID on Fashion-MNIST features)."""
    from l2c_compile.apps.evaluate import EvalConfig
    from l2c_compile.io import check_output_file, hold_outputs, write_text_atomic
    from l2c_compile.router import init_distributed

    if out is not None:
        check_output_file(out, "report")  # before sampling, not after it
    rank, world, rank_device = init_distributed()
    batch_arg = {} if batch is None else {"batch": batch}  # None: EvalConfig's default
    cfg = EvalConfig(
        model=model,
        nfe=nfe,
        sampler=sampler,
        schedule=schedule,
        threshold=threshold,
        samples=samples,
        seed=seed,
        cfg_scale=cfg_scale,
        **batch_arg,
        workers=workers,
        backend=backend,
        device=device or (str(rank_device) if world > 1 else "cpu"),
    )
    with hold_outputs(out if rank == 0 else None):  # a second writer, an unwritable or full folder
        report = _evaluate(cfg, fmt, rank, world)
        if rank == 0 and out is not None:
            write_text_atomic(out, json.dumps(report, indent=2, default=str) + "\n")
    if rank == 0:  # every rank holds the same report; one prints and writes it
        _print_report(report, fmt)


def _evaluate(cfg, fmt: OutputFormat, rank: int, world: int) -> dict:
    """Run the evaluation on this rank (progress on rank 0), then end the process group; the report."""
    from l2c_compile.apps.evaluate import run_eval

    try:
        if rank != 0:
            report = run_eval(cfg)
        elif fmt == OutputFormat.json:
            with progress_bars():  # on stderr: stdout stays JSON
                report = run_eval(cfg)
        else:
            with progress_bars(on=console) as bars:
                report = run_eval(
                    cfg, (lambda msg: bars.stage(msg + "…")) if bars else (lambda _: None)
                )
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    return report


def _print_report(report: dict, fmt: OutputFormat) -> None:
    """The report as JSON or as a table with the MACs and latency line."""
    if fmt == OutputFormat.json:
        print_json(report)
        return
    console.print(render_table(report))
    m = report["machine"]
    console.print(
        f"MACs/image {report['macs_full'] / 1e9:.3f} G → {report['macs_cached'] / 1e9:.3f} G · removed "
        f"{report['removed']}/{report['removable']} cache-step sublayers ({report['schedule']['mode']}) · "
        f"latency measured on {m['device'] if m['device'] != 'cpu' else m['cpu']} with "
        f"{m['threads']} threads, {report['workers']} worker(s) × batch {report['batch']}"
        + (f" (rank 0 of {report['world_size']})" if report["world_size"] > 1 else ""),
        highlight=False,
    )
    if report.get("timing_note"):
        print_labelled("note:", report["timing_note"], "yellow", on=console)


def render_table(report: dict) -> Table:
    """The cached-vs-uncached metrics of an evaluation report as a rich table."""
    names = report["metric_names"]
    ranks = f" · {report['world_size']} ranks" if report.get("world_size", 1) > 1 else ""
    table = Table(
        title=f"{report['model']} · {report['sampler']} · NFE {report['nfe']} · "
        f"{report['samples']} samples · seed {report['seed']}{ranks}"
    )
    table.add_column("metric")
    table.add_column("uncached", justify="right")
    table.add_column("schedule", justify="right")
    for key in ("fid", "precision", "recall", "class_accuracy"):
        table.add_row(names[key], f"{report[f'{key}_full']:.4g}", f"{report[key]:.4g}")
    table.add_row(names["psnr"], "–", f"{report['psnr']:.2f}")
    table.add_row(
        "latency per image (s)",
        f"{report['latency_per_image_full_s']:.4f}",
        f"{report['latency_per_image_s']:.4f}",
    )
    return table
