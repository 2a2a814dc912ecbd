"""`l2c-compile schedule import | heuristic | show`: make a Schedule file and look at it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from l2c_compile.cli.common import OutputFormat, cli_errors, console, print_json
from l2c_compile.cli.models_cmd import human
from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import kind_name, kinds
from l2c_compile.models.select import spec_kinds

if TYPE_CHECKING:
    from l2c_compile.schedule import Schedule

app = typer.Typer(
    help="Make schedules from routers or heuristics, and show them.",
    no_args_is_help=True,
)

_MODEL = typer.Option(None, "--model", "-m", help="registry name, see `l2c-compile models`")
_DIFFUSERS = typer.Option(None, "--diffusers", help="local diffusers pipeline or model folder, instead of --model")
_SAMPLER = typer.Option(None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)")
_NFE = typer.Option(..., "--nfe", help="number of model calls")
_OUT = typer.Option(..., "--out", "-o", help="schedule JSON file to write")
_FORMAT = typer.Option(OutputFormat.rich, "--format", help="rich or json")


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Report an unwritable output path as a one-line L2CError rather than a traceback."""
    try:
        yield
    except OSError as exc:
        raise L2CError(f"cannot write {path}: {exc.strerror or exc}") from None


def _check_schedule_out(path: Path) -> None:
    """Before any work: the output may be new or an earlier schedule file, nothing else."""
    from l2c_compile.inputs import read_json
    from l2c_compile.io import check_output_file
    from l2c_compile.schedule.format import SCHEDULE_FORMAT

    check_output_file(path, "schedule")
    if not path.exists():
        return
    try:
        document = read_json(path, "schedule")
    except L2CError:
        document = None
    if not isinstance(document, dict) or document.get("format") != SCHEDULE_FORMAT:
        raise L2CError(
            f"{path} exists and is not a schedule file; refusing to overwrite it (nothing was "
            "written; choose another -o)"
        )


def _target(model: str | None, diffusers: Path | None, sampler: str | None, nfe: int) -> tuple[Any, Any, int]:
    """(model spec, sampler plan, number of cacheable blocks) for the command-line choices."""
    from l2c_compile.models.select import make_spec_plan, select_spec, spec_blocks

    spec = select_spec(model, diffusers)
    return spec, make_spec_plan(spec, sampler, nfe), spec_blocks(spec)


def _pct(part: int, whole: int) -> str:
    return f"{part} / {whole} ({100 * part / whole:.2f}%)" if whole else f"{part} / 0"


def summary_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """A people-facing table of :func:`schedule_summary`'s numbers."""
    s = summary
    table = Table(title=title, show_header=False)
    theta = "-" if s["threshold"] is None else f"{s['threshold']:g}"
    table.add_row("model", f"{s['model']} ({s['depth']} blocks)")
    table.add_row("sampler", f"{s['sampler']} · {s['nfe']} NFE · θ={theta}")
    # a full sha256 would wrap the table; 12 hex digits identify a file for a reader
    source = {
        k: f"{v[:12]}…" if k == "sha256" else v
        for k, v in s["source"].items()
        if k not in ("checked", "unchecked")
    }
    table.add_row("source", ", ".join(f"{k}={v}" for k, v in source.items()))
    if "checked" in s["source"]:  # router imports: which facts of the file matched the target
        table.add_row("router facts checked", ", ".join(s["source"]["checked"]) or "none")
        unchecked = s["source"].get("unchecked") or []
        table.add_row("unchecked (not in the file)", ", ".join(unchecked) if unchecked else "none")
    table.add_row("cache steps", f"{s['cache_steps']} of {s['nfe']}")
    per_kind = s["cache_steps"] * s["depth"]
    for kind in kinds():
        if f"skipped_{kind}" in s:
            table.add_row(f"skipped {kind_name(kind)}", _pct(s[f"skipped_{kind}"], per_kind))
    table.add_row("skipped total", _pct(s["skipped_total"], s["total_cache_sublayers"]))
    table.add_row("distinct step masks", str(s["distinct_masks"]))
    if s["macs_full"] is not None:
        table.add_row("MACs per image", f"{human(s['macs_full'])} → {human(s['macs_cached'])}")
        table.add_row("ideal speedup", f"{s['ideal_speedup']:.3f}×")
    return table


def _report(schedule: Schedule, out: Path | None, fmt: OutputFormat) -> None:
    """Print the summary of a schedule just written to ``out``."""
    from l2c_compile.schedule.summary import schedule_summary

    summary = schedule_summary(schedule)
    if fmt == OutputFormat.json:
        print_json({"schedule": str(out), **summary} if out is not None else summary)
        return
    console.print(summary_table(summary, title=f"wrote {out}" if out is not None else None))


@app.command("import")
@cli_errors
def import_cmd(
    router: Path = typer.Argument(..., help="router file: official DiT/U-ViT or l2c-router"),
    model: str | None = _MODEL,
    diffusers: Path | None = _DIFFUSERS,
    sampler: str | None = _SAMPLER,
    nfe: int = _NFE,
    threshold: float | None = typer.Option(
        None, "--threshold", help="θ: computed iff sigmoid(logit) > θ (default: DiT 0.1, U-ViT 0.9)"
    ),
    out: Path = _OUT,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """Threshold a trained (or released) router into a schedule file."""
    from l2c_compile.schedule import default_threshold, import_router

    _check_schedule_out(out)
    spec, plan, depth = _target(model, diffusers, sampler, nfe)
    theta = default_threshold(getattr(spec, "router_family", spec.family)) if threshold is None else threshold
    schedule = import_router(router, plan, model=spec.name, depth=depth, threshold=theta, kinds=spec_kinds(spec))
    with _writing(out):
        schedule.save(out)
    _report(schedule, out, fmt)


@app.command("heuristic")
@cli_errors
def heuristic_cmd(
    model: str | None = _MODEL,
    diffusers: Path | None = _DIFFUSERS,
    sampler: str | None = _SAMPLER,
    nfe: int = _NFE,
    kind: str = typer.Option(..., "--kind", help="random | top | bottom | all"),
    fraction: float | None = typer.Option(
        None, "--fraction", help="share of each cache step's sublayers to reuse, in [0, 1]"
    ),
    seed: int = typer.Option(0, "--seed", help="seed for --kind random"),
    out: Path = _OUT,
    fmt: OutputFormat = _FORMAT,
) -> None:
    """A baseline schedule (paper Fig. 4): reuse random, top or bottom sublayers, or all of them."""
    from l2c_compile.schedule import heuristic

    _check_schedule_out(out)
    spec, plan, depth = _target(model, diffusers, sampler, nfe)
    if fraction is None:
        if kind != "all":
            raise L2CError(f"--kind {kind} needs --fraction F (share of sublayers, in [0, 1])")
        fraction = 1.0
    schedule = heuristic(kind, plan, model=spec.name, depth=depth, fraction=fraction, seed=seed,
                         kinds=spec_kinds(spec))
    with _writing(out):
        schedule.save(out)
    _report(schedule, out, fmt)


@app.command("show")
@cli_errors
def show_cmd(
    file: Path = typer.Argument(..., help="schedule JSON file"),
    fmt: OutputFormat = _FORMAT,
    png: Path | None = typer.Option(None, "--png", help="also write a reuse heatmap (png/pdf/svg)"),
) -> None:
    """Show a schedule: the skip grid and its summary, or the summary as JSON."""
    from l2c_compile.schedule import Schedule, rich_grid, save_heatmap
    from l2c_compile.schedule.summary import schedule_summary

    schedule = Schedule.load(file)
    summary = schedule_summary(schedule)
    if png is not None:
        with _writing(png):
            save_heatmap(schedule, png)
    if fmt == OutputFormat.json:
        print_json(summary if png is None else {**summary, "png": str(png)})
        return
    console.print(rich_grid(schedule))
    console.print(summary_table(summary))
    if png is not None:
        console.print(f"wrote {png}")
