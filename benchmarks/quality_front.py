"""Cost–quality fronts of issue 25: ΔFID and PSNR against MACs per image, every point at every seed.

Driven by ``quality.py --front MODEL:NFE[,…]`` (rows from :func:`quality_tables.front_rows`).
Seed-major: the whole front at the first seed, then at the next, one JSON line per (point, seed)
appended to ``results/quality-front.jsonl`` as it finishes, so a run stopped by ``--deadline``
or killed leaves complete seeds and ``--resume`` continues. The report (``quality-front.md`` and
one ``quality-front-<model>-nfe<NFE>.png`` per front) is rebuilt from the file after each run.

Verdict of an L2C (or heuristic) point: at each seed, its paired ΔFID (and PSNR) minus the
fewer-steps curve's, linearly interpolated at the point's MACs (the paired differences share
the seed's noise, so the seed-to-seed spread of that difference is the spread that matters).
``better`` / ``worse`` when every seed agrees in sign, ``tie`` otherwise.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import append_text, read_jsonl
from quality_tables import Row, front_kind, macs

from l2c_compile.io import write_text_atomic
from l2c_compile.models.registry import get_spec

METRICS = ("fid", "fid_delta", "psnr", "precision", "recall", "class_accuracy", "latency_s")


def point_line(row: Row, seed: int, samples: int, q: dict[str, float]) -> dict[str, Any]:
    """The JSON line of one front point at one seed."""
    spec = get_spec(row.model)
    stats = row.schedule.stats() if row.schedule is not None else None
    return {
        "key": row.key,
        "model": row.model,
        "method": row.method,
        "kind": front_kind(row.method),
        "sampler": row.plan.sampler,
        "nfe": row.plan.nfe,
        "ref_nfe": row.ref_nfe,
        "macs": macs(spec, row.schedule, row.plan.nfe),
        "macs_ref": macs(spec, None, row.ref_nfe),
        "removed": stats["skipped_total"] if stats else 0,
        "removable": stats["total_cache_sublayers"] if stats else None,
        "threshold": row.schedule.threshold if row.schedule is not None else None,
        "seed": seed,
        "samples": samples,
        **{k: q.get(k) for k in METRICS},
    }


def run_front(
    rows: list[Row],
    runner: Any,
    seeds: list[int],
    jsonl: Path,
    env: dict[str, Any],
    deadline: float | None = None,
) -> int:
    """Score every row at every seed, seed-major, skipping (key, seed, K) already in ``jsonl``;
    start nothing after ``deadline`` seconds. Returns how many lines were written."""
    done = {(r["key"], r["seed"], r["samples"]) for r in read_jsonl(jsonl)}
    start, written = time.monotonic(), 0
    for seed in seeds:
        for row in rows:
            if (row.key, seed, runner.samples) in done:
                continue
            if deadline is not None and time.monotonic() - start > deadline:
                print(f"deadline reached; stopped before {row.method} at seed {seed}", flush=True)
                return written
            t0 = time.monotonic()
            q, _ = runner.score(row, seed)
            line = {
                **point_line(row, seed, runner.samples, q),
                "seconds": time.monotonic() - t0,  # sampling (shared draws once) and scoring
                "env": env,
            }
            append_text(jsonl, json.dumps(line, default=str) + "\n")
            written += 1
            print(
                f"[{time.monotonic() - start:6.0f} s] seed {seed} {row.model} {row.method}: "
                f"ΔFID {line['fid_delta']:+.2f} PSNR {line['psnr'] or float('inf'):.1f} "
                f"({time.monotonic() - t0:.0f} s)",
                flush=True,
            )
        runner.drawn.clear()  # samples of a finished seed are not needed again
    return written


# ---------------------------------------------------------------------------------------------
# Aggregation, verdict, report
# ---------------------------------------------------------------------------------------------


def aggregate(lines: list[dict[str, Any]]) -> dict[tuple[str, int, int], list[dict[str, Any]]]:
    """Per (model, reference NFE, K): one entry per point with its per-seed values, in the order
    the points first appear. A later line for the same (point, seed, K) replaces an earlier."""
    fronts: dict[tuple[str, int, int], dict[str, dict[str, Any]]] = {}
    for ln in lines:
        front = fronts.setdefault((ln["model"], ln["ref_nfe"], ln["samples"]), {})
        point = front.setdefault(ln["key"], {**ln, "per_seed": {}})
        point["per_seed"][ln["seed"]] = {k: ln.get(k) for k in METRICS}
    return {k: list(v.values()) for k, v in fronts.items()}


def _values(point: dict[str, Any], metric: str) -> list[float]:
    """``metric`` at each seed the point was scored at, in seed order."""
    return [point["per_seed"][s][metric] for s in sorted(point["per_seed"])]


def front_seeds(points: list[dict[str, Any]]) -> list[int]:
    """Every seed any point of the front was scored at."""
    return sorted(set().union(*(p["per_seed"] for p in points)))


def curve_at(steps: list[dict[str, Any]], metric: str, seed: int, x: float) -> float | None:
    """The fewer-steps curve's ``metric`` at ``seed``, interpolated at MACs ``x`` (None outside
    its MACs range or where a point lacks the value, e.g. the reference's PSNR)."""
    pts = sorted(
        (p["macs"], p["per_seed"][seed][metric])
        for p in steps
        if seed in p["per_seed"] and p["per_seed"][seed][metric] is not None
    )
    if len(pts) < 2 or not pts[0][0] <= x <= pts[-1][0]:
        return None
    xs, ys = zip(*pts, strict=True)
    return float(np.interp(x, xs, ys))


def verdict(point: dict[str, Any], steps: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Paired per-seed difference of ``point`` from the fewer-steps curve at its MACs.

    ``better`` when every seed's difference favours the point (lower ΔFID, higher PSNR),
    ``worse`` when every seed's favours the curve, ``tie`` otherwise; ``n/a`` outside the curve.
    """
    diffs = []
    for seed, vals in sorted(point["per_seed"].items()):
        ref = curve_at(steps, metric, seed, point["macs"])
        if ref is None or vals[metric] is None:
            continue
        diffs.append(vals[metric] - ref)
    if not diffs:
        return {"call": "n/a", "diffs": []}
    sign = -1 if metric == "fid_delta" else 1  # which sign favours the point
    if len(diffs) > 1 and all(sign * d > 0 for d in diffs):
        call = "better"
    elif len(diffs) > 1 and all(sign * d < 0 for d in diffs):
        call = "worse"
    else:
        call = "tie" if len(diffs) > 1 else "one seed"
    return {"call": call, "diffs": diffs, "mean": statistics.fmean(diffs)}


def _range(vals: list[float | None], spec: str = ".2f") -> str:
    got = [v for v in vals if v is not None]
    if not got:
        return "–"
    mean = statistics.fmean(got)
    return format(mean, spec) + (f" [{min(got):{spec}}, {max(got):{spec}}]" if len(got) > 1 else "")


def render_front(key: tuple[str, int, int], points: list[dict[str, Any]]) -> str:
    """One front as a markdown table: mean [min, max over seeds] and the verdict columns.

    Each point is summarised over the seeds it was scored at; a point scored at fewer seeds than
    the front (a run stopped early, or a point added later) says which, after its name.
    """
    model, nfe, samples = key
    seeds = front_seeds(points)
    steps = [p for p in points if p["kind"] == "steps"]
    partial = any(sorted(p["per_seed"]) != seeds for p in points)
    out = [
        f"### {model}, NFE {nfe}: K = {samples}, seeds {seeds}"
        + (" (fewer where a point says so)" if partial else ""),
        "",
        "| point | NFE | MACs/img (G) | removed | ΔFID vs uncached (paired) | PSNR vs uncached (dB) "
        "| FID | vs fewer steps: ΔFID diff | vs fewer steps: PSNR diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p["kind"] != "steps", p["macs"])):
        removed = f"{p['removed']}/{p['removable']}" if p["removable"] else "0"
        calls = []
        for metric in ("fid_delta", "psnr"):
            v = verdict(p, steps, metric) if p["kind"] != "steps" else {"call": ""}
            calls.append(
                f"{_range(v['diffs'], '+.2f')} **{v['call']}**" if v.get("diffs") else v["call"]
            )
        own = sorted(p["per_seed"])
        name = p["method"] + (f" (seeds {own} only)" if own != seeds else "")
        out.append(
            f"| {name} | {p['nfe']} | {p['macs'] / 1e9:.3f} | {removed} "
            f"| {_range(_values(p, 'fid_delta'))} | {_range(_values(p, 'psnr'), '.1f')} "
            f"| {_range(_values(p, 'fid'))} | {calls[0]} | {calls[1]} |"
        )
    return "\n".join(out)


MARKERS = {"L2C": "o", "heuristic": "x", "baseline": "^"}


def plot_front(key: tuple[str, int, int], points: list[dict[str, Any]], path: Path) -> None:
    """ΔFID and PSNR against MACs per image, seed min–max as error bars, written to ``path``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from l2c_compile.images import save_figure

    model, nfe, samples = key
    seeds = front_seeds(points)
    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, label in zip(
        axes,
        ("fid_delta", "psnr"),
        ("ΔFID vs uncached (paired, lower is better)", "PSNR vs uncached (dB, higher is better)"),
        strict=True,
    ):
        for kind, style in (("steps", "-"), ("L2C", ""), ("heuristic", ""), ("baseline", "")):
            pts = sorted(
                (p for p in points if p["kind"] == kind and None not in _values(p, metric)),
                key=lambda p: p["macs"],
            )
            if not pts:
                continue
            x = [p["macs"] / 1e9 for p in pts]
            vals = [_values(p, metric) for p in pts]
            mid = [statistics.fmean(v) for v in vals]
            err = [
                [m - min(v) for m, v in zip(mid, vals, strict=True)],
                [max(v) - m for m, v in zip(mid, vals, strict=True)],
            ]
            ax.errorbar(
                x,
                mid,
                yerr=err,
                fmt=MARKERS.get(kind, "s") + style,
                capsize=3,
                label="fewer steps (uncached)" if kind == "steps" else kind,
            )
            for p, xi, yi in zip(pts, x, mid, strict=True):
                name = p["method"].split(" ", 1)[1]
                if len(p["per_seed"]) < len(seeds):
                    name += f" ({len(p['per_seed'])} of {len(seeds)} seeds)"
                ax.annotate(name, (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("MACs per image (G)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{model}, NFE {nfe}: K = {samples} images, seeds {seeds} (bars: min–max over seeds)"
    )
    save_figure(fig, path)


def front_png(model: str, nfe: int) -> str:
    """File name of one front's plot."""
    return f"quality-front-{model}-nfe{nfe}.png"


def write_report(jsonl: Path, out: Path, header: str) -> None:
    """``quality-front.md`` and one plot per (model, NFE) at its largest K, from ``jsonl``."""
    fronts = aggregate(read_jsonl(jsonl))
    parts, plotted = [header], set()
    for key, points in sorted(fronts.items(), key=lambda kv: (kv[0][0], -kv[0][1], -kv[0][2])):
        if key[:2] not in plotted:
            plotted.add(key[:2])
            plot_front(key, points, out / front_png(key[0], key[1]))
        parts += ["", render_front(key, points), "", f"Plot: `{front_png(key[0], key[1])}`."]
    write_text_atomic(out / "quality-front.md", "\n".join(parts) + "\n")
