"""Rendering a Schedule for people: the spec's text grid, a coloured rich table, a heatmap.

Grid cells (spec §5.2): ``B`` attention and MLP both reused, ``A`` only attention reused, ``M``
only MLP reused, ``.`` both computed. Rows are the cache calls in sampling order. A schedule with
other kinds (PixArt: attention, cross-attention, MLP) gets one letter per kind in each block's
cell (each kind's letter from the vocabulary, :func:`~l2c_compile.families.vocabulary.kind_letter`: ``a``
attention, ``x`` cross-attention, ``m`` MLP where reused, ``.`` where computed, ``-`` where the
block's group has no such kind), the cells separated by spaces, and `` | `` between block groups of
different kinds (FLUX: double- | single-stream blocks); the heatmap has one panel per kind.
A free-form (version 2) schedule's rows are every call after the first; a call that reuses the
whole trunk shows ``T`` in every cell (every sublayer skipped, the trunk output reused).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import DEFAULT_KINDS, kind_letter, kind_name
from l2c_compile.io import atomic_path

if TYPE_CHECKING:
    from l2c_compile.schedule.format import Schedule


_CELL = {(True, True): "B", (True, False): "A", (False, True): "M", (False, False): "."}
_STYLE = {
    "B": "bold red",
    "A": "yellow",
    "M": "cyan",
    ".": "dim",
    "T": "bold magenta",
    "-": "dim",
    "a": "yellow",
    "x": "magenta",
    "m": "cyan",
    " ": "",
}


def _cell(mask: Sequence[Any], block: int, kinds: tuple[str, ...], has: tuple[str, ...] | None = None) -> str:
    """One block's cell: B/A/M/. for attention + MLP, else one letter (or ``.``) per kind
    (``-`` for a kind the block does not have; ``has``: the block's kinds)."""
    if kinds == DEFAULT_KINDS:
        return _CELL[(block in mask[0], block in mask[1])]
    return "".join(("-" if has is not None and k not in has else kind_letter(k) if block in ids else ".")
                   for k, ids in zip(kinds, mask, strict=True))


def _join(schedule: Schedule, cells: Sequence[str]) -> str:
    """One string of per-block ``cells``: separated by a space when blocks have several kinds,
    and by `` | `` between block groups of different kinds (FLUX: double- | single-stream)."""
    sep = "" if schedule.kinds == DEFAULT_KINDS else " "
    bounds = set(itertools.accumulate(n for n, _ in schedule.layout.groups))
    return "".join(c + ("" if b + 1 == len(cells) else " | " if b + 1 in bounds else sep)
                   for b, c in enumerate(cells))


def _header(schedule: Schedule) -> str:
    """Block numbers over the cells (last digit; one column per kind letter)."""
    width = 1 if schedule.kinds == DEFAULT_KINDS else len(schedule.kinds)
    return _join(schedule, [str(b % 10).ljust(width) for b in range(schedule.depth)]).rstrip()


def _grid_rows(schedule: Schedule) -> list[tuple[str, str, str]]:
    """(router idx, timestep, cells) per cache call, as strings."""
    kinds = schedule.kinds
    layout = schedule.layout
    has = [None if layout.is_uniform else layout.kinds_of(b) for b in range(schedule.depth)]
    rows = []
    width = 1 if kinds == DEFAULT_KINDS else len(kinds)
    for c in schedule.cache_calls:
        if c.trunk:
            cells = _join(schedule, ["T" * width] * schedule.depth)
        else:
            cells = _join(schedule, [_cell(c.mask, b, kinds, has[b]) for b in range(schedule.depth)])
        idx = "-" if c.router_index is None else str(c.router_index)
        rows.append((idx, f"{c.timestep:.0f}", cells))
    return rows


def render_grid(schedule: Schedule) -> str:
    """Text grid (spec §5.2): rows = cache calls, columns = blocks; B/A/M reused, . computed
    (other kinds: a/x/m per block; T: the call reuses the trunk; see the module docstring)."""
    rows = _grid_rows(schedule)
    wi = max([3, *(len(r[0]) for r in rows)])
    wt = max([3, *(len(r[1]) for r in rows)])
    digits = _header(schedule)
    lines = [f"{'idx':<{wi}}  {'t':<{wt}}  {digits}"]
    lines += [f"{i:>{wi}}  {t:>{wt}}  {cells}" for i, t, cells in rows]
    return "\n".join(lines) + "\n"


def rich_grid(schedule: Schedule) -> Any:
    """The grid of :func:`render_grid` as a coloured rich Table."""
    from rich.table import Table
    from rich.text import Text

    theta = "" if schedule.threshold is None else f", θ={schedule.threshold:g}"
    kinds = schedule.kinds
    caption = (
        "B both reused · A attention reused · M MLP reused · . computed"
        if kinds == DEFAULT_KINDS
        else f"{'/'.join(kind_letter(k) for k in kinds)} reused ({', '.join(kind_name(k) for k in kinds)}) · . computed"
    )
    if any(c.trunk for c in schedule.calls):
        caption += " · T trunk reused (every block skipped)"
    table = Table(
        title=f"{schedule.model} · {schedule.sampler} · {schedule.nfe} NFE{theta}",
        caption=caption,
        box=None,
        pad_edge=False,
    )
    table.add_column("idx", justify="right")
    table.add_column("t", justify="right")
    table.add_column(_header(schedule), no_wrap=True)
    for idx, t, cells in _grid_rows(schedule):
        text = Text()
        for ch in cells:
            text.append(ch, style=_STYLE.get(ch, "magenta"))
        table.add_row(idx, t, text)
    return table


COMPUTED_COLOUR = "#eeeeee"
REUSED_COLOUR = "#c0392b"
ABSENT_COLOUR = "#ffffff"


def heatmap_figure(schedule: Schedule) -> Any:
    """A reuse heatmap with one panel per sublayer kind (attention / MLP; PixArt adds
    cross-attention), cache steps × layers, as a matplotlib Figure.

    Cells are red where the sublayer is reused (dropped, for a drop schedule), light grey where it
    is computed and white where the block has no such kind (FLUX's single-stream blocks have no
    text MLP); a black line separates block groups of different kinds; each panel's title counts
    over the blocks that have the kind; the figure's title gives the removed share.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import ListedColormap
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise L2CError("heatmaps need matplotlib: pip install 'l2c-compile[images]'") from None
    calls = schedule.cache_calls
    if not calls:
        raise L2CError("schedule has no cache steps to plot")
    kinds = schedule.kinds
    layout = schedule.layout
    # (kinds, cache steps, layers): 1 reused, 0 computed, NaN where the block has no such kind
    panels = torch.full((len(kinds), len(calls), schedule.depth), float("nan"))
    for k, kind in enumerate(kinds):
        panels[k, :, list(layout.blocks(kind))] = 0.0
    for j, c in enumerate(calls):
        for k, ids in enumerate(c.mask):
            panels[k, j, list(layout.blocks(kinds[k])) if c.trunk else sorted(ids)] = 1.0
    labels = [f"{'-' if c.router_index is None else c.router_index} · t={c.timestep:.0f}"
              + (" · trunk" if c.trunk else "") for c in calls]
    reused = "dropped (zero output)" if schedule.mode == "drop" else "reused from the cache"
    cmap = ListedColormap([COMPUTED_COLOUR, REUSED_COLOUR]).with_extremes(bad=ABSENT_COLOUR)
    # block groups of different kinds (FLUX: double- then single-stream blocks) are split by a line
    bounds = list(itertools.accumulate(n for n, _ in layout.groups))[:-1]
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    fig = Figure(
        figsize=(
            max(4.0 * len(kinds), 1.5 + 0.25 * len(kinds) * schedule.depth),
            2.2 + 0.25 * len(calls),
        ),
        layout="constrained",
    )
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(kinds), sharey=True, squeeze=False)[0]
    step = max(1, schedule.depth // 30)  # tick every block up to 30 blocks, then every few
    for ax, data, name in zip(axes, panels, [kind_name(k) for k in kinds], strict=True):
        ax.imshow(data.numpy(), cmap=cmap, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
        present = int((~data.isnan()).sum())
        ax.set_title(f"{name}: {int(data.nan_to_num(0).sum())} of {present} {reused.split()[0]}")
        ax.set_xlabel("layer (block index)")
        ticks = range(0, schedule.depth, step)
        ax.set_xticks(ticks, [str(b) for b in ticks], fontsize=7)
        ax.set_yticks(range(len(calls)), labels, fontsize=7)
        # Thin white lines between cells, so single reused sublayers stay visible.
        ax.set_xticks([b - 0.5 for b in range(1, schedule.depth)], minor=True)
        ax.set_yticks([j - 0.5 for j in range(1, len(calls))], minor=True)
        ax.grid(which="minor", color="white", linewidth=0.6)
        ax.tick_params(which="minor", length=0)
        for b in bounds:
            ax.axvline(b - 0.5, color="black", linewidth=1.2)
    axes[0].set_ylabel("cache step (router idx · t)" if schedule.version == 1 else "call (router idx · t)")
    stats = schedule.stats()
    theta = "" if schedule.threshold is None else f", θ={schedule.threshold:g}"
    fig.suptitle(
        f"{schedule.model} · {schedule.sampler} · {schedule.nfe} NFE{theta} — removed "
        f"{stats['skipped_fraction']:.0%} of cache-step sublayers "
        f"({stats['skipped_total']} of {stats['total_cache_sublayers']})"
    )
    handles = [
        Patch(facecolor=REUSED_COLOUR, label=reused),
        Patch(facecolor=COMPUTED_COLOUR, edgecolor="#999999", label="computed"),
    ]
    if bool(panels.isnan().any()):
        handles.append(Patch(facecolor=ABSENT_COLOUR, edgecolor="#999999", label="not in this block"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    return fig


def save_heatmap(schedule: Schedule, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Write :func:`heatmap_figure` to ``path`` (png, pdf or svg by suffix), atomically."""
    fig = heatmap_figure(schedule)
    fmt = Path(path).suffix.lstrip(".").lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        raise L2CError(f"cannot write a heatmap as .{fmt}; use .png, .pdf or .svg")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
