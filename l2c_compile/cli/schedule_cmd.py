"""`l2c-compile schedule import | export | heuristic | show`: make a Schedule file, hand it to other
tools, and look at it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from l2c_compile.cli.common import (
    HEIGHT,
    NUM_FRAMES,
    WIDTH,
    OutputFormat,
    cli_errors,
    console,
    print_json,
    sample_size,
)
from l2c_compile.cli.models_cmd import human
from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import kind_name, kinds
from l2c_compile.models.select import spec_layout

if TYPE_CHECKING:
    from l2c_compile.schedule import Schedule

app = typer.Typer(
    help="Make schedules from routers, other tools' files or baselines; export and show them.",
    no_args_is_help=True,
)

_MODEL = typer.Option(None, "--model", "-m", help="registry name, see `l2c-compile models`")
_DIFFUSERS = typer.Option(None, "--diffusers", help="local diffusers pipeline or model folder, instead of --model")
_SAMPLER = typer.Option(None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)")
_NFE = typer.Option(..., "--nfe", help="number of model calls")
_OUT = typer.Option(..., "--out", "-o", help="schedule JSON file to write")
_FORMAT = typer.Option(OutputFormat.rich, "--format", help="rich or json")
_FILE_FORMATS = ("router", "smoothcache", "invardiff", "cachedit")
_AS_TRUNK = typer.Option(
    False, "--cachedit-as-trunk",
    help="read (or write) a cache-dit step mask's 0-steps as trunk reuse: the latest computed trunk OUTPUT, "
         "whereas cache-dit adds the middle blocks' cached residual to this step's first blocks",
)


def _formats(given: list[str] | None, files: tuple[str, ...], default: str | None) -> tuple[str, OutputFormat]:
    """Split repeatable ``--format`` values into (file format, output format); L2CError for an
    unknown value or two of one sort."""
    from l2c_compile.errors import suggest

    outputs = tuple(f.value for f in OutputFormat)
    chosen_file, chosen_out = [], []
    for f in given or ():
        if f in files:
            chosen_file.append(f)
        elif f in outputs:
            chosen_out.append(f)
        else:
            raise L2CError(f"unknown --format {f!r}; choose a file format ({', '.join(files)}) and/or an output "
                           f"format ({', '.join(outputs)})" + suggest(f, files + outputs))
    if len(chosen_file) > 1 or len(chosen_out) > 1:
        raise L2CError(f"--format given twice for the same thing: {', '.join(chosen_file + chosen_out)}")
    if not chosen_file and default is None:
        raise L2CError(f"--format needs the file format: one of {', '.join(files)}")
    return (chosen_file[0] if chosen_file else default), OutputFormat(chosen_out[0] if chosen_out else "rich")


def _spec_family(spec: Any) -> Any:
    """The family declaration of a registry or diffusers spec."""
    from l2c_compile.families import get_family

    return spec.declaration if spec.family == "diffusers" else get_family(spec.family)


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


def _target(model: str | None, diffusers: Path | None, sampler: str | None, nfe: int,
            size: dict[str, int] | None = None) -> tuple[Any, Any, int]:
    """(model spec, sampler plan, number of cacheable blocks) for the command-line choices
    (``size``: a video folder's ``--num-frames``, ``--height``, ``--width``)."""
    from l2c_compile.models.select import make_spec_plan, select_spec, spec_blocks

    spec = select_spec(model, diffusers, size)
    return spec, make_spec_plan(spec, sampler, nfe), spec_blocks(spec)


def _sized(schedule: Schedule, spec: Any) -> Schedule:
    """``schedule`` with the sample size it was made for recorded, where the model's config does
    not fix it (Wan; :mod:`l2c_compile.schedule.sizes`); as it is for every other model."""
    from l2c_compile.models.select import spec_size
    from l2c_compile.schedule.sizes import with_sample_size

    return with_sample_size(schedule, spec_size(spec))


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
    router: Path = typer.Argument(..., help="router file (official DiT/U-ViT or l2c-router), or another tool's "
                                  "schedule file with --format smoothcache | invardiff | cachedit"),
    model: str | None = _MODEL,
    diffusers: Path | None = _DIFFUSERS,
    sampler: str | None = _SAMPLER,
    nfe: int = _NFE,
    threshold: float | None = typer.Option(
        None, "--threshold", help="θ: computed iff sigmoid(logit) > θ (default: DiT 0.1, U-ViT 0.9)"
    ),
    out: Path = _OUT,
    formats: list[str] | None = typer.Option(
        None, "--format", help="the file's format: router (default) | smoothcache | invardiff | cachedit; "
        "and/or the report's: rich (default) | json (repeat --format for both)"),
    as_trunk: bool = _AS_TRUNK,
    num_frames: int | None = NUM_FRAMES,
    height: int | None = HEIGHT,
    width: int | None = WIDTH,
) -> None:
    """Threshold a trained (or released) router into a schedule file, or read another tool's schedule."""
    from l2c_compile.schedule import ImportTarget, default_threshold, import_router, import_schedule

    file_format, fmt = _formats(formats, _FILE_FORMATS, "router")
    if file_format != "router" and threshold is not None:
        raise L2CError(f"--threshold applies to routers, not to a {file_format} file")
    _check_schedule_out(out)
    spec, plan, depth = _target(model, diffusers, sampler, nfe, sample_size(num_frames, height, width))
    if file_format == "router":
        theta = default_threshold(getattr(spec, "router_family", spec.family)) if threshold is None else threshold
        schedule = import_router(router, plan, model=spec.name, depth=depth, threshold=theta,
                                 kinds=spec_layout(spec))
    else:
        target = ImportTarget(spec.name, _spec_family(spec), spec_layout(spec), plan)
        schedule = import_schedule(router, file_format, target, cachedit_as_trunk=as_trunk)
    schedule = _sized(schedule, spec)
    with _writing(out):
        schedule.save(out)
    _report(schedule, out, fmt)


@app.command("export")
@cli_errors
def export_cmd(
    schedule_file: Path = typer.Argument(..., help="schedule JSON file"),
    out: Path = typer.Option(..., "--out", "-o", help="the other tool's file to write (JSON)"),
    formats: list[str] | None = typer.Option(
        None, "--format", help="smoothcache | invardiff | cachedit (required); and/or rich (default) | json "
        "for the report"),
    family: str | None = typer.Option(
        None, "--family", help="model family (default: the registry family of the schedule's model)"),
    as_trunk: bool = _AS_TRUNK,
) -> None:
    """Write a schedule in another tool's format (refused, in one line, where it cannot say the same)."""
    from l2c_compile.inputs import read_json
    from l2c_compile.io import check_output_file
    from l2c_compile.schedule import FORMATS, Schedule, save_export

    file_format, fmt = _formats(formats, FORMATS, None)
    check_output_file(out, f"{file_format} file")
    if out.exists():
        try:
            read_json(out, "earlier export")
        except L2CError:
            raise L2CError(f"{out} exists and is not a JSON file; refusing to overwrite it (nothing was "
                           "written; choose another -o)") from None
    schedule = Schedule.load(schedule_file)
    with _writing(out):
        doc = save_export(schedule, file_format, out, family=family, cachedit_as_trunk=as_trunk)
    if fmt == OutputFormat.json:
        print_json({"export": str(out), "format": file_format, "keys": list(doc)})
        return
    console.print(f"wrote {out} ({file_format}: {', '.join(doc)})")


@app.command("heuristic")
@cli_errors
def heuristic_cmd(
    model: str | None = _MODEL,
    diffusers: Path | None = _DIFFUSERS,
    sampler: str | None = _SAMPLER,
    nfe: int = _NFE,
    kind: str = typer.Option(..., "--kind", help="random | top | bottom | all | fora | step-mask | deepcache"),
    fraction: float | None = typer.Option(
        None, "--fraction", help="share of each cache step's sublayers to reuse, in [0, 1]"
    ),
    seed: int = typer.Option(0, "--seed", help="seed for --kind random"),
    interval: int | None = typer.Option(
        None, "--interval", help="fora, deepcache: every N-th call computes (calls 0, N, 2N, …)"),
    compute_last: bool = typer.Option(False, "--compute-last", help="fora: the last call computes too"),
    first: int | None = typer.Option(None, "--first", help="step-mask: the first K calls compute"),
    last: int | None = typer.Option(None, "--last", help="step-mask: the last K calls compute"),
    every: int | None = typer.Option(
        None, "--every", help="step-mask: in between, every M-th call computes; the others reuse the trunk"),
    blocks: str | None = typer.Option(
        None, "--blocks", help="deepcache: blocks A:B (A ≤ i < B) whose sublayers the other calls reuse"),
    out: Path = _OUT,
    fmt: OutputFormat = _FORMAT,
    num_frames: int | None = NUM_FRAMES,
    height: int | None = HEIGHT,
    width: int | None = WIDTH,
) -> None:
    """A baseline schedule: the paper's (Fig. 4: random, top or bottom sublayers, or all of them) or a
    static one from the literature (FORA, cache-dit-style step masks, DeepCache block ranges)."""
    from l2c_compile.schedule import BASELINES, HEURISTICS, baseline, heuristic

    if kind not in HEURISTICS and kind not in BASELINES:
        from l2c_compile.errors import suggest

        names = HEURISTICS + tuple(BASELINES)
        raise L2CError(f"unknown heuristic {kind!r}; choose from {', '.join(names)}" + suggest(kind, names))
    params = _baseline_params(kind, fraction, interval, compute_last, first, last, every, blocks)
    _check_schedule_out(out)
    spec, plan, depth = _target(model, diffusers, sampler, nfe, sample_size(num_frames, height, width))
    if kind in BASELINES:
        schedule = baseline(kind, plan, spec_layout(spec), model=spec.name, **params)
    else:
        if fraction is None:
            if kind != "all":
                raise L2CError(f"--kind {kind} needs --fraction F (share of sublayers, in [0, 1])")
            fraction = 1.0
        schedule = heuristic(kind, plan, model=spec.name, depth=depth, fraction=fraction, seed=seed,
                             kinds=spec_layout(spec))
    schedule = _sized(schedule, spec)
    with _writing(out):
        schedule.save(out)
    _report(schedule, out, fmt)


def _baseline_params(kind: str, fraction: float | None, interval: int | None, compute_last: bool,
                     first: int | None, last: int | None, every: int | None, blocks: str | None) -> dict[str, Any]:
    """The keyword parameters of baseline ``kind`` from the options; L2CError for a missing one or
    one that belongs to another kind."""
    given = {"--fraction": fraction, "--interval": interval, "--compute-last": compute_last or None,
             "--first": first, "--last": last, "--every": every, "--blocks": blocks}
    takes = {"fora": ("--interval", "--compute-last"), "step-mask": ("--first", "--last", "--every"),
             "deepcache": ("--interval", "--blocks")}.get(kind, ("--fraction",))
    stray = next((o for o, v in given.items() if v is not None and o not in takes), None)
    if stray is not None:
        raise L2CError(f"{stray} does not apply to --kind {kind} (it takes {', '.join(takes)})")
    if kind not in ("fora", "step-mask", "deepcache"):
        return {}
    missing = [o for o in takes if o != "--compute-last" and given[o] is None]
    if missing:
        raise L2CError(f"--kind {kind} needs {', '.join(missing)}")
    if kind == "fora":
        return {"interval": interval, "compute_last": compute_last}
    if kind == "step-mask":
        return {"first": first, "last": last, "every": every}
    a, sep, b = (blocks or "").partition(":")
    if not sep or not a.strip().isdigit() or not b.strip().isdigit():
        raise L2CError(f"--blocks must be A:B (block ids, A < B), got {blocks!r}")
    return {"interval": interval, "start": int(a), "stop": int(b)}


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
