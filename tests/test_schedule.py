"""Schedule, router files, heuristics and rendering, checked against the released L2C routers.

The oracles are the tables and grids of L2C_SPEC.md §4.1 and §5 (copied here as literals).
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import Layout
from l2c_compile.samplers import Combination, ModelCall, SamplerPlan, SolverStep, make_plan
from l2c_compile.schedule import (
    CallSchedule,
    Schedule,
    heuristic,
    import_router,
    render_grid,
    rich_grid,
    save_heatmap,
    save_router,
)

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared/data/routers"
DIT, UVIT = ("DiT-XL/2", 28), ("U-ViT-H/2", 29)


# ---------------------------------------------------------------------------------------------
# Plans: the samplers' own cadences (spec §4.2, §4.3)
# ---------------------------------------------------------------------------------------------


def ddim_plan(n: int) -> SamplerPlan:
    """DDIM over the respaced schedule: router idx = position, odd → full, even → cache."""
    return make_plan("ddim", n)


def dpm_plan(nfe: int) -> SamplerPlan:
    """DPM-Solver-2, shifted cache: s_0 full, midpoints full, s_k (k ≥ 1) cache with row k."""
    return make_plan("dpm-solver-2", nfe)


RELEASED = {  # file, plan factory, model, θ, cache steps, skipped attention, skipped MLP
    "DDIM20": ("DDIM20_router.pt", lambda: ddim_plan(20), DIT, 0.1, 10, 123, 125),
    "DDIM50": ("DDIM50_router.pt", lambda: ddim_plan(50), DIT, 0.1, 25, 329, 335),
    "dpm20": ("dpm20_router.pth", lambda: dpm_plan(20), UVIT, 0.9, 9, 158, 175),
    "dpm50": ("dpm50_router.pth", lambda: dpm_plan(50), UVIT, 0.9, 24, 649, 655),
}


def router_path(name: str) -> Path:
    path = ROUTERS / RELEASED[name][0]
    if not path.is_file():
        pytest.skip(f"released router {path} not available")
    return path


def released(name: str, threshold: float | None = None) -> Schedule:
    _, plan, (model, depth), theta, *_ = RELEASED[name]
    th = theta if threshold is None else threshold
    return import_router(router_path(name), plan(), model=model, depth=depth, threshold=th)


def ids(text: str) -> tuple[int, ...]:
    """'0-1,3-26' → (0, 1, 3, ..., 26); '-' → ()."""
    out: list[int] = []
    for part in text.split(","):
        if part == "-":
            continue
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return tuple(out)


def small_schedule() -> Schedule:
    return heuristic("bottom", ddim_plan(6), model="tiny", depth=3, fraction=0.5)


# ---------------------------------------------------------------------------------------------
# Released routers reproduce the spec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(RELEASED))
def test_released_router_counts_match_readme(name: str) -> None:
    *_, cache_steps, attn, mlp = RELEASED[name]
    st = released(name).stats()
    assert (st["cache_steps"], st["skipped_attn"], st["skipped_mlp"]) == (cache_steps, attn, mlp)
    assert st["total_cache_sublayers"] == cache_steps * 2 * RELEASED[name][2][1]
    assert st["skipped_total"] == attn + mlp


SPEC_ROWS = [  # name, router idx, timestep, skipped MHSA, skipped FFN (spec §5.2)
    ("DDIM20", 14, 736, "0-1,3-26", "0-2,4-26"),
    ("DDIM20", 10, 526, "0-1,3-5,10-12,15,20,22", "0,4-20,22"),
    ("DDIM20", 0, 0, "-", "-"),
    ("DDIM50", 28, 571, "0-1,3-5,7-23,25", "0,4-22,24,27"),
    ("DDIM50", 22, 449, "0-1,3-5,10,22", "0,4-12,14,17,20"),
    ("DDIM50", 8, 163, "-", "-"),
    ("dpm20", 6, 401, "3-20,28", "3-21,23-24,27-28"),
    ("dpm20", 9, 101, "13,15,18,28", "10,12,15,28"),
    ("dpm50", 23, 81, "2-21,28", "0,5-24,28"),
    ("dpm50", 24, 41, "2-5,7-20,28", "5,7-20,28"),
]


@pytest.mark.parametrize(("name", "idx", "t", "attn", "mlp"), SPEC_ROWS)
def test_per_step_layer_lists_match_spec(name: str, idx: int, t: int, attn: str, mlp: str) -> None:
    (call,) = [c for c in released(name).cache_calls if c.router_index == idx]
    assert round(call.timestep) == t
    assert (call.reused("attn"), call.reused("mlp")) == (ids(attn), ids(mlp))


THETA_TABLE = {  # θ → skipped fraction (%) for DDIM20, DDIM50, dpm20, dpm50 (spec §4.1)
    0.05: (43.75, 46.07, 55.36, 88.58),
    0.3: (46.43, 50.07, 56.90, 89.51),
    0.7: (50.36, 53.79, 60.34, 92.10),
    0.9: (55.18, 56.64, 63.79, 93.68),
}


@pytest.mark.parametrize("theta", list(THETA_TABLE))
def test_theta_sensitivity_table(theta: float) -> None:
    got = tuple(round(100 * released(n, theta).stats()["skipped_fraction"], 2) for n in RELEASED)
    assert got == THETA_TABLE[theta]


DDIM20_GRID = """\
idx  t    0123456789012345678901234567
 18  946  BBBBBBBBBBBBBBBBBBBBBBBBBBBB
 16  841  BBBBBBBBBBBBBBBBBBBBBBBBBBBB
 14  736  BBMABBBBBBBBBBBBBBBBBBBBBBB.
 12  631  BAAABBBBBBBBBBBBBBBBBBBBMA.M
 10  526  BA.ABBMMMMBBBMMBMMMMB.B.....
  8  421  BA..........................
  6  315  .A..........................
  4  210  .A..........................
  2  105  .A..........................
  0    0  ............................
"""

DPM20_GRID_ROWS = """\
  1  900  BBBBBBBBBBBBBBBBBBBBBBBBBBBBB
  2  800  BBBBBBBBBBBBBBBBBBBBBBBBBMMBB
  3  700  BMBBBBBBBBBBBBBBBBBBBBBBM.MMB
  4  600  BBBBBBBBBBBBBBBBBBBBBBBBM..MB
  5  501  B.BBBBBBBBBBBBBBBBBBBBBBM..MB
  6  401  ...BBBBBBBBBBBBBBBBBBM.MM..MB
  7  301  ...MM.M...M..A.AM...........B
  8  201  ......M...M..A.A............B
  9  101  ..........M.MA.B..A.........B
"""


def test_grids_match_spec_text() -> None:
    assert render_grid(released("DDIM20")) == DDIM20_GRID
    lines = render_grid(released("dpm20")).splitlines()
    assert lines[0] == "idx  t    " + "0123456789" * 2 + "012345678"
    assert "\n".join(lines[1:]) + "\n" == DPM20_GRID_ROWS
    ddim50 = render_grid(released("DDIM50")).splitlines()
    assert ddim50[11] == " 28  571  BA.ABBMBBBBBBBBBBBBBBBBAMA.M"
    assert ddim50[21] == "  8  163  ............................"
    assert (
        render_grid(released("dpm50")).splitlines()[-1] == " 24   41  ..AAAB.BBBBBBBBBBBBBB.......B"
    )


def test_rich_grid_shows_the_same_cells() -> None:
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    console.print(rich_grid(released("DDIM20")))
    text = console.export_text()
    assert "BA.ABBMMMMBBBMMBMMMMB.B....." in text
    assert "DiT-XL/2" in text and "θ=0.1" in text


def test_distinct_masks_of_released_routers() -> None:
    assert len(released("DDIM20").distinct_masks()) == 7
    assert len(released("DDIM50").distinct_masks()) == 14
    masks = released("DDIM20").distinct_masks()
    assert (frozenset(), frozenset()) in masks  # full calls (and the idx-0 cache call)


def test_imported_schedule_fits_its_plan_and_records_source() -> None:
    s = released("dpm20")
    s.check_fits(Layout.uniform(29), dpm_plan(20), "U-ViT-H/2")
    assert s.source["kind"] == "router" and s.source["file"] == "dpm20_router.pth"
    assert len(s.source["sha256"]) == 64
    assert s.threshold == 0.9 and s.sampler == "dpm-solver-2"
    assert [c.index for c in s.cache_calls] == list(range(2, 20, 2))


# ---------------------------------------------------------------------------------------------
# Threshold semantics and the data model
# ---------------------------------------------------------------------------------------------


def test_threshold_equality_reuses() -> None:
    plan = ddim_plan(4)
    logits = torch.zeros(4, 4)  # sigmoid = 0.5 everywhere
    logits[:, 3] = 5.0
    at = Schedule.from_router(logits, plan, model="tiny", depth=2, threshold=0.5)
    below = Schedule.from_router(logits, plan, model="tiny", depth=2, threshold=0.49)
    (cache,) = [c.index for c in plan.calls if c.role == "cache"][:1]
    assert at.mask(cache) == (frozenset({0, 1}), frozenset({0}))
    assert below.mask(cache) == (frozenset(), frozenset())
    assert at.mask(0) == (frozenset(), frozenset())  # full calls never consult the router


def test_all_compute_reuses_nothing() -> None:
    plan = dpm_plan(10)
    s = Schedule.all_compute("U-ViT-H/2", 29, plan)
    s.check_fits(Layout.uniform(29), plan, "U-ViT-H/2")
    st = s.stats()
    assert st["skipped_total"] == 0 and st["cache_steps"] == 4
    assert s.distinct_masks() == ((frozenset(), frozenset()),)
    assert s.threshold is None and s.source == {"kind": "all-compute"}


def test_layer_ids_are_sorted_and_stats_consistent() -> None:
    c = CallSchedule(1, 5.0, "cache", 0, reuse={"attn": (2, 0), "mlp": [1]})
    assert c.reused("attn") == (0, 2) and c.reused("mlp") == (1,)
    s = small_schedule()
    st = s.stats()
    assert st["skipped_fraction"] == pytest.approx(
        st["skipped_total"] / st["total_cache_sublayers"]
    )
    assert st["skipped_fraction_all_calls"] == pytest.approx(st["skipped_total"] / (6 * 3 * 2))


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    s = released("dpm50")
    path = tmp_path / "s.json"
    s.save(path)
    loaded = Schedule.load(path)
    assert loaded == s
    assert json.loads(path.read_text())["format"] == "l2c-schedule"
    assert hash(loaded) == hash(s)
    assert [c.timestep for c in loaded.calls] == [c.timestep for c in s.calls]


def test_json_is_diff_friendly() -> None:
    s = released("DDIM20")
    text = s.to_json()
    lines = text.splitlines()
    assert sum('"index":' in line for line in lines) == s.nfe  # one call per line
    calls = list(s.calls)
    calls[5] = CallSchedule(5, calls[5].timestep, "cache", 14, reuse={"attn": (3,), "mlp": ()})
    edited = Schedule(s.model, s.depth, s.sampler, s.nfe, s.threshold, s.source, tuple(calls))
    changed = [
        d for d in difflib.ndiff(lines, edited.to_json().splitlines()) if d[:2] in ("- ", "+ ")
    ]
    assert len(changed) == 2  # exactly one line out, one line in


# ---------------------------------------------------------------------------------------------
# Error paths
# ---------------------------------------------------------------------------------------------


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(L2CError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_schedule_load_errors(tmp_path: Path) -> None:
    one_line_error(Schedule.load, tmp_path / "nope.json", match="not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    one_line_error(Schedule.load, bad, match="not valid JSON")
    d = small_schedule().to_dict()
    for patch, match in [
        ({"format": "other"}, "not an l2c-schedule"),
        ({"version": 3}, "unsupported l2c-schedule version 3"),
        ({"version": True}, "unsupported l2c-schedule version True"),
        ({"version": 2}, "call 0 lacks reuse_trunk"),
        ({"nfe": 7}, "6 calls but nfe=7"),
        ({"depth": "3"}, "depth must be a positive integer"),
        ({"threshold": 1.5}, "threshold must be in"),
    ]:
        bad.write_text(json.dumps({**d, **patch}))
        one_line_error(Schedule.load, bad, match=match)
    calls = [dict(c) for c in d["calls"]]
    cache = next(i for i, c in enumerate(calls) if c["role"] == "cache")
    for edit, match in [
        ((cache, "reuse_mlp", [3]), "layer 3 but the model has 3 blocks"),
        ((0, "reuse_attn", [0]), "call 0 is a full step but reuses"),
        ((cache, "reuse_attn", [1, 1]), "lists a layer twice"),
        ((cache, "role", "cached"), "role must be"),
    ]:
        i, key, value = edit
        bad.write_text(
            json.dumps({**d, "calls": [*calls[:i], {**calls[i], key: value}, *calls[i + 1 :]]})
        )
        one_line_error(Schedule.load, bad, match=match)


def test_reuse_before_any_compute_is_rejected() -> None:
    calls = (CallSchedule(0, 9.0, "cache", 0, reuse={"attn": (1,), "mlp": ()}), CallSchedule(1, 0.0, "full"))
    one_line_error(
        Schedule,
        "tiny",
        2,
        "ddim",
        2,
        None,
        {},
        calls,
        match="reuses attn of block 1 before any earlier call computed it",
    )


def test_check_fits_rejects_other_model_layout_plan_or_roles() -> None:
    s = released("DDIM20")
    plan = ddim_plan(20)
    dit = Layout.uniform(28)
    one_line_error(s.check_fits, dit, plan, "U-ViT-H/2", match="made for DiT-XL/2 but the model is U-ViT-H/2")
    s.check_fits(dit, plan)  # no name given: only the blocks and the plan are compared
    one_line_error(s.check_fits, Layout.uniform(24), plan, "DiT-XL/2", match="28 blocks but DiT-XL/2 has 24")
    one_line_error(s.check_fits, Layout.uniform(28, ("attn", "cross", "mlp")), plan,
                   match=r"covers sublayer kinds \['attn', 'mlp'\], this model's blocks have \['attn', 'cross', 'mlp'\]")
    one_line_error(s.check_fits, Layout(((20, ("attn", "mlp")), (8, ("attn",)))), plan,
                   match=r"block groups \[\[28, \['attn', 'mlp'\]\]\] differ from this model's \[\[20")
    one_line_error(s.check_fits, dit, ddim_plan(50), match="20 NFE .* 50 NFE")
    one_line_error(s.check_fits, dit, dpm_plan(20), match="made for ddim with 20 NFE but the sampler plan is dpm-solver-2")
    shifted = SamplerPlan(
        "ddim",
        20,
        tuple(
            SolverStep(
                (
                    ModelCall(
                        c.index,
                        c.timestep,
                        "cache" if c.role == "full" and c.index else c.role,
                        c.router_index,
                    ),
                ),
                Combination(1.0),
            )
            for c in plan.calls
        ),
        "linear",
        "discrete",
    )
    one_line_error(s.check_fits, dit, shifted, match="call 2 is a full step in the schedule")


def test_router_shape_errors_name_both_numbers() -> None:
    path = router_path("DDIM20")
    msg = one_line_error(
        import_router,
        path,
        dpm_plan(20),
        model="DiT-XL/2",
        depth=29,
        threshold=0.1,
        match="router has 56 entries per step",
    )
    assert "DiT-XL/2 has 29 blocks (needs 58)" in msg
    dpm = router_path("dpm20")
    one_line_error(
        import_router,
        dpm,
        dpm_plan(20),
        model="DiT-XL/2",
        depth=28,
        threshold=0.9,
        match="router has 58 entries per step but DiT-XL/2 has 28 blocks \\(needs 56\\)",
    )
    one_line_error(
        import_router,
        path,
        ddim_plan(50),
        model="DiT-XL/2",
        depth=28,
        threshold=0.1,
        match="router has 20 steps but the sampler plan has 50 NFE",
    )
    one_line_error(
        Schedule.from_router,
        torch.zeros(20, 56),
        ddim_plan(20),
        model="m",
        depth=28,
        threshold=-0.1,
        match="threshold must be in",
    )
    bad_row = SamplerPlan(
        "ddim",
        2,
        (
            SolverStep((ModelCall(0, 1.0, "full", None),), Combination(1.0)),
            SolverStep((ModelCall(1, 0.0, "cache", 5),), Combination(1.0)),
        ),
        "linear",
        "discrete",
    )
    one_line_error(
        Schedule.from_router,
        torch.zeros(2, 4),
        bad_row,
        model="m",
        depth=2,
        threshold=0.5,
        match="call 1 uses router row 5 but the router has 2 steps",
    )


def test_own_router_for_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.safetensors"
    save_router(path, torch.zeros(20, 56), {"model": "DiT-L/2", "sampler": "ddim", "nfe": 20})
    one_line_error(
        import_router,
        path,
        ddim_plan(20),
        model="DiT-XL/2",
        depth=28,
        threshold=0.1,
        match="trained for DiT-L/2 but the model is DiT-XL/2",
    )


# ---------------------------------------------------------------------------------------------
# Heuristic baselines
# ---------------------------------------------------------------------------------------------


def test_random_heuristic_reuses_exactly_the_fraction() -> None:
    plan = ddim_plan(20)
    s = heuristic("random", plan, model="DiT-XL/2", depth=28, fraction=0.3, seed=1)
    assert s.stats()["skipped_total"] == round(0.3 * 560)
    assert s == heuristic("random", plan, model="DiT-XL/2", depth=28, fraction=0.3, seed=1)
    other = heuristic("random", plan, model="DiT-XL/2", depth=28, fraction=0.3, seed=2)
    assert other.stats()["skipped_total"] == 168 and other != s
    s.check_fits(Layout.uniform(28), plan, "DiT-XL/2")


def test_top_and_bottom_heuristics() -> None:
    plan = dpm_plan(10)
    top = heuristic("top", plan, model="m", depth=4, fraction=0.4, seed=0)  # k = round(3.2) = 3
    bottom = heuristic("bottom", plan, model="m", depth=4, fraction=0.4)
    for c in top.cache_calls:
        assert (c.reused("attn"), c.reused("mlp")) == ((3,), (2, 3))  # entries 5, 6, 7
    for c in bottom.cache_calls:
        assert (c.reused("attn"), c.reused("mlp")) == ((0, 1), (0,))  # entries 0, 1, 2
    assert top.stats()["skipped_total"] == 3 * 4
    assert all(c.reused("attn") == () for c in top.calls if c.role == "full")


def test_all_heuristic_and_bad_arguments() -> None:
    plan = dpm_plan(10)
    s = heuristic("all", plan, model="m", depth=4, fraction=0.0)
    assert s.stats()["skipped_fraction"] == 1.0
    assert len(s.distinct_masks()) == 2
    one_line_error(
        heuristic, "randon", plan, model="m", depth=4, fraction=0.5, match="did you mean 'random'"
    )
    one_line_error(
        heuristic, "top", plan, model="m", depth=4, fraction=1.5, match="fraction must be in"
    )


# ---------------------------------------------------------------------------------------------
# Heatmap
# ---------------------------------------------------------------------------------------------


def test_heatmap_png_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "plots" / "ddim20.png"
    save_heatmap(released("DDIM20"), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one_line_error(
        save_heatmap, small_schedule(), tmp_path / "plots" / "x.bogus", match="cannot write"
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["ddim20.png"]


def test_heatmap_has_layer_ticks_a_legend_and_the_removed_share() -> None:
    pytest.importorskip("matplotlib")
    from l2c_compile.schedule.render import REUSED_COLOUR, heatmap_figure

    sched = small_schedule()  # 3 blocks, bottom half of the sublayers reused
    st = sched.stats()
    fig = heatmap_figure(sched)
    attn_ax, mlp_ax = fig.axes
    for ax in (attn_ax, mlp_ax):
        assert list(ax.get_xticks()) == [0, 1, 2]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
        assert ax.get_xlabel() == "layer (block index)"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["reused from the cache", "computed"]
    assert legend.legend_handles[0].get_facecolor()[:3] == pytest.approx(
        tuple(int(REUSED_COLOUR[i : i + 2], 16) / 255 for i in (1, 3, 5))
    )
    title = fig.get_suptitle()
    share = f"removed {st['skipped_fraction']:.0%} of cache-step sublayers"
    assert share in title and f"({st['skipped_total']} of {st['total_cache_sublayers']})" in title
    assert attn_ax.get_title().endswith(f"of {len(sched.cache_calls) * 3} reused")
    drop = heatmap_figure(heuristic("bottom", ddim_plan(6), model="t", depth=3, fraction=0.5, mode="drop"))
    assert drop.legends[0].get_texts()[0].get_text() == "dropped (zero output)"


def test_heatmap_and_grid_show_block_groups_of_different_kinds() -> None:
    """FLUX-shaped layout: double-stream blocks (attn, mlp, txt_mlp) then single-stream (attn, mlp)."""
    pytest.importorskip("matplotlib")
    import numpy as np

    from l2c_compile.schedule.render import heatmap_figure

    layout = Layout(((2, ("attn", "mlp", "txt_mlp")), (3, ("attn", "mlp"))))
    sched = heuristic("all", ddim_plan(6), model="t", depth=5, fraction=1.0, kinds=layout)
    calls = len(sched.cache_calls)
    fig = heatmap_figure(sched)
    attn_ax, _, txt_ax = fig.axes
    # counts are over the blocks that have the kind; the single-stream blocks have no text MLP
    assert attn_ax.get_title() == f"attention: {5 * calls} of {5 * calls} reused"
    assert txt_ax.get_title() == f"text MLP: {2 * calls} of {2 * calls} reused"
    data = txt_ax.get_images()[0].get_array()
    assert np.ma.getmaskarray(data)[:, 2:].all() and not np.ma.getmaskarray(data)[:, :2].any()
    assert [t.get_text() for t in fig.legends[0].get_texts()][-1] == "not in this block"
    # a line between the groups, in every panel
    assert all(any(list(line.get_xdata()) == [1.5, 1.5] for line in ax.get_lines()) for ax in fig.axes)
    grid = render_grid(sched).splitlines()
    assert grid[0].endswith("  0   1   | 2   3   4")
    assert all(row.endswith("amt amt | am- am- am-") for row in grid[1:])
    uniform = render_grid(small_schedule())
    assert "|" not in uniform and "not in this block" not in [
        t.get_text() for t in heatmap_figure(small_schedule()).legends[0].get_texts()]


# ---------------------------------------------------------------------------------------------
# Free-form schedules (version 2): reuse at any call after the first, several calls back, trunk
# ---------------------------------------------------------------------------------------------


def free_form(calls: dict[int, dict | str], nfe: int = 6, depth: int = 3) -> Schedule:
    """A schedule over a DDIM plan where ``calls[i]`` is ``{kind: ids}`` or ``"trunk"``."""
    plan = ddim_plan(nfe)
    out = []
    for c in plan.calls:
        want = calls.get(c.index, {})
        reuse = {"attn": [], "mlp": [], **({} if want == "trunk" else want)}
        out.append(CallSchedule(c.index, float(c.timestep), c.role, c.router_index,
                                reuse=reuse, trunk=want == "trunk"))
    return Schedule("tiny", depth, plan.sampler, nfe, None, {"kind": "test"}, tuple(out))


def test_version_is_the_lowest_that_holds_the_calls() -> None:
    assert small_schedule().version == 1  # L2C's cadence: only cache calls reuse
    plan = ddim_plan(6)
    full = next(c.index for c in plan.calls[1:] if c.role == "full")
    assert free_form({full: {"attn": [1]}}).version == 2  # a full step reuses
    assert free_form({3: "trunk"}).version == 2
    with pytest.raises(L2CError, match=f"call {full} is a full step but reuses sublayers.*version 2"):
        Schedule(**{**free_form({full: {"attn": [1]}}).__dict__, "version": 1})


def test_free_form_round_trips_byte_for_byte(tmp_path: Path) -> None:
    s = free_form({1: {"attn": [0, 2]}, 2: {"attn": [0], "mlp": [1]}, 3: "trunk", 4: "trunk"})
    text = s.to_json()
    assert '"version": 2' in text and '"reuse_trunk": true' in text
    again = Schedule.from_json(text)
    assert again == s and again.to_json() == text
    st = s.stats()
    assert st["trunk_calls"] == 2 and st["cache_steps"] == 5
    assert st["skipped_total"] == 4 + 2 * 6  # a trunk call skips all 6 sublayers
    assert "trunk_calls" not in small_schedule().stats()  # version 1 stats are as they were


@pytest.mark.parametrize(("calls", "match"), [
    ({0: "trunk"}, "call 0 reuses the trunk before any earlier call ran the blocks"),
    ({0: {"mlp": [2]}}, "call 0 reuses mlp of block 2 before any earlier call computed it"),
])
def test_free_form_reuse_needs_an_earlier_writer(calls: dict, match: str) -> None:
    one_line_error(free_form, calls, match=match)


def test_a_trunk_call_lists_no_sublayers_and_needs_cache_mode() -> None:
    one_line_error(CallSchedule, 1, 900.0, "full", None, reuse={"attn": (1,), "mlp": ()}, trunk=True,
                   match="reuses the trunk, so it lists no sublayers")
    s = free_form({2: "trunk"})
    one_line_error(Schedule, **{**s.__dict__, "mode": "drop"}, match="only a cache schedule")


def test_a_version_1_document_cannot_say_reuse_trunk(tmp_path: Path) -> None:
    d = small_schedule().to_dict()
    d["calls"][1] = {**d["calls"][1], "reuse_trunk": False}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(d))
    one_line_error(Schedule.load, path, match="version 1 schedules do not have")
