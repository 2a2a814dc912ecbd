"""`l2c-compile demo`: the whole flow on the shipped reference model, into one folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from l2c_compile.cli.common import cli_errors, console, progress_bars


@cli_errors
def demo(
    model: str = typer.Option("DiT-FMNIST", "--model", "-m", help="a model with shipped weights"),
    nfe: int = typer.Option(20, "--nfe"),
    router: Path | None = typer.Option(None, "--router", help="router file (default: the shipped one)"),
    threshold: float | None = typer.Option(None, "--threshold"),
    train_steps: int = typer.Option(150, "--train-steps", help="if no router is shipped: data-free steps"),
    per_class: int = typer.Option(2, "--per-class", help="samples per class in the grid"),
    repeats: int = typer.Option(3, "--repeats", help="timed runs per executor"),
    seed: int = typer.Option(0, "--seed"),
    out: Path = typer.Option(Path("l2c-demo"), "--out", "-o"),
) -> None:
    """Import (or train) a router, compile, verify, sample, benchmark: the main job, in minutes on a CPU."""
    from l2c_compile.apps.demo import DemoConfig, quality_rows, run_demo

    cfg = DemoConfig(model=model, nfe=nfe, router=router, threshold=threshold, train_steps=train_steps,
                     per_class=per_class, repeats=repeats, seed=seed, out=out)
    with progress_bars(on=console) as bars:
        def stage(msg: str) -> None:
            console.log(msg)
            if bars is not None:
                bars.stage(msg + "…")

        report = run_demo(cfg, stage)
    table = Table(title=f"{report['model']} · {report['sampler']}-{report['nfe']} · batch {report['batch']}")
    table.add_column("executor")
    table.add_column("median s", justify="right")
    table.add_column("× compiled uncached", justify="right")
    for name, row in report["latency"].items():
        table.add_row(name, f"{row['median_s']:.3f}", f"{row['speedup_vs_compiled_uncached']:.2f}")
    console.print(table)
    quality = Table(title="quality (samples.png: uncached left, cached right)")
    for col in ("metric", "uncached", "cached (L2C)", "unit"):
        quality.add_column(col, justify="left" if col in ("metric", "unit") else "right")
    for row in quality_rows(report):
        quality.add_row(*row)
    console.print(quality)
    s = report["schedule"]
    console.print(f"ideal speedup {s.get('ideal_speedup', 0):.3f}× · verify max rel error "
                  f"{report['verify']['max_rel_error']:.1e}")
    console.print(f"wrote {out}/: samples.png, schedule.png, schedule.json, artifact/, report.md, report.json")
