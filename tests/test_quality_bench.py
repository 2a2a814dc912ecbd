"""benchmarks/quality.py end to end on small stand-ins of the Fashion-MNIST models."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from l2c_compile.fmnist import classifier
from l2c_compile.samplers import make_plan
from tests.fmnist_stand_ins import install_feature_net, install_model, ship_router, use_router_dir

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
DIT, UVIT, NFE = "DiT-FMNIST-stand-in", "U-ViT-FMNIST-stand-in", 4


def _load_bench():
    spec = importlib.util.spec_from_file_location("quality_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


@pytest.fixture(scope="module")
def tables(bench):
    return sys.modules["quality_tables"]  # imported by the benchmark from its own folder


@pytest.fixture()
def stand_ins(bench, tmp_path, monkeypatch):
    install_feature_net(tmp_path, monkeypatch)
    dit = install_model(tmp_path, monkeypatch, "DiT-FMNIST", DIT)
    uvit = install_model(tmp_path, monkeypatch, "U-ViT-FMNIST", UVIT)
    routers = use_router_dir(tmp_path, monkeypatch)
    ship_router(routers, dit, "ddim", NFE, lam=3e-4)
    ship_router(routers, dit, "ddim", NFE, tag="lam0.001", seed=2, lam=1e-3)
    ship_router(routers, dit, "ddim", NFE, tag="drop", seed=3, lam=3e-4, mode="drop")
    ship_router(routers, uvit, "dpm-solver-2", NFE, lam=0.3)
    yield dit, uvit
    classifier.load_classifier.cache_clear()
    classifier.reference_stats.cache_clear()


def test_fewer_steps_matches_macs_and_keeps_dpm_even(tables):
    ddim = make_plan("ddim", 20)
    assert tables.fewer_steps(ddim, 0.8) == 16 and tables.fewer_steps(ddim, 0.01) == 1
    dpm = make_plan("dpm-solver-2", 20)
    assert tables.fewer_steps(dpm, 0.72) == 14 and tables.fewer_steps(dpm, 0.01) == 2
    assert tables.fewer_steps(dpm, 0.99) == 18 and tables.fewer_steps(ddim, 1.0) == 19  # never N


def test_layer_heuristics_hit_an_exact_count(tables):
    plan = make_plan("ddim", 6)  # cache calls 1, 3, 5
    top = tables.layers("top", plan, "m", 3, removed=4)
    bottom = tables.layers("bottom", plan, "m", 3, removed=4)
    # 4 over 3 calls: the first cache call takes 2, the others 1 (entries attn0, mlp0, attn1, …).
    assert [(c.reused("attn"), c.reused("mlp")) for c in top.cache_calls] == [
        ((2,), (2,)),
        ((), (2,)),
        ((), (2,)),
    ]
    assert [(c.reused("attn"), c.reused("mlp")) for c in bottom.cache_calls] == [
        ((0,), (0,)),
        ((0,), ()),
        ((0,), ()),
    ]
    assert top.threshold is None and top.source["removed"] == 4


def test_rows_match_macs_and_removal(bench, stand_ins):
    rows = bench.build_rows(["1", "5", "9"], DIT, UVIT, [NFE], [NFE], NFE)
    by = {(r.table, r.method, r.plan.nfe): r for r in rows}
    l2c = by[("5", "Learning-to-cache", NFE)].schedule
    removed = l2c.stats()["skipped_total"]
    drop = by[("5", "Learning-to-drop", NFE)].schedule
    assert drop.mode == "drop" and drop.stats()["skipped_total"] == removed  # exact match
    assert by[("5", "Random drop", NFE)].schedule.mode == "drop"
    for method in ("Random drop", "Random cache", "Cache top layers", "Cache bottom layers"):
        assert by[("5", method, NFE)].schedule.stats()["skipped_total"] == removed
    assert by[("5", "Cache all, every other step", NFE)].schedule.stats()["skipped_fraction"] == 1.0

    lams = [r.method for r in rows if r.table == "9" and r.model == DIT]
    assert lams[0] == "λ = 0 (DDIM)" and set(lams[1:]) == {"L2C λ = 0.0003", "L2C λ = 0.001"}
    uvit = [r.method for r in rows if r.table == "9" and r.model == UVIT]  # its sweep beside
    assert uvit[0] == "λ = 0 (DPM-Solver-2)" and len(uvit) >= 2
    (few,) = [r for r in rows if r.table == "1" and "fewer steps" in r.method]
    assert few.plan.nfe < NFE and all(r.ref_nfe == NFE for r in rows if r.table == "1")


def _argv(out: Path, tables: str) -> list[str]:
    return [
        *("--samples", "10", "--seeds", "0,1", "--batch", "10", "--tables", tables),
        *("--dit", DIT, "--uvit", UVIT, "--dit-nfes", str(NFE), "--uvit-nfes", str(NFE)),
        *("--sweep-nfe", str(NFE), "--out", str(out)),
    ]


def test_benchmark_writes_rows_grids_and_resumes(bench, stand_ins, tmp_path, monkeypatch):
    out = tmp_path / "results"
    bench.main(_argv(out, "1,6"))
    lines = [json.loads(x) for x in (out / "quality.jsonl").read_text().splitlines()]
    assert [r["method"] for r in lines] == [
        "DDIM",
        "DDIM, fewer steps (matched MACs)",
        "L2C",
        "DPM-Solver-2",
        "Cache all (unshifted)",
        "Cache all (shifted)",
        "L2C (shifted)",
    ]
    for r in lines:
        assert r["samples"] == 10 and r["fid"] >= 0 and r["env"]["threads"] == 1
        headline = r["method"] in ("DDIM", "L2C", "DPM-Solver-2")
        assert r["seeds"] == ([0, 1] if headline else [0])  # headline rows measure the spread
        assert (r["fid_spread"] is not None) == headline
        if r["mode"] is None and r["nfe"] == r["ref_nfe"]:
            assert "psnr" not in r  # the reference itself
        else:
            assert r["psnr"] > 0
    unshifted = next(r for r in lines if r["method"] == "Cache all (unshifted)")
    assert unshifted["options"]["shifted"] is False and unshifted["removed"] > 0
    md = (out / "quality.md").read_text()
    assert bench.TITLES["1"] in md and bench.TITLES["6"] in md and bench.TITLES["5"] not in md
    assert "ΔFID vs uncached (paired)" in md and "not Inception" in md
    l2c = next(r for r in lines if r["method"] == "L2C")
    assert l2c["fid_delta"] == pytest.approx(l2c["fid"] - lines[0]["fid"])  # same seeds, paired
    assert l2c["fid_delta_spread"] is not None
    assert {f.name for f in out.glob("*.png")} == {
        f"quality-table1-nfe{NFE}.png",
        f"quality-table6-nfe{NFE}.png",
    }

    def no_sampling(*args, **kwargs):
        raise AssertionError("--resume sampled a row that was already done")

    grids = {f.name: f.read_bytes() for f in out.glob("*.png")}
    monkeypatch.setattr(bench.Runner, "draw", no_sampling)
    bench.main([*_argv(out, "1,6"), "--resume"])
    assert len((out / "quality.jsonl").read_text().splitlines()) == len(lines)
    assert {f.name: f.read_bytes() for f in out.glob("*.png")} == grids  # nothing redrawn


@pytest.mark.slow
def test_benchmark_runs_every_table(bench, stand_ins, tmp_path):
    out = tmp_path / "results"
    bench.main(_argv(out, ",".join(bench.TABLES)))
    lines = [json.loads(x) for x in (out / "quality.jsonl").read_text().splitlines()]
    assert {r["table"] for r in lines} == set(bench.TABLES)
    md = (out / "quality.md").read_text()
    assert all(title in md for title in bench.TITLES.values())
    assert all((out / f"quality-table{t}-nfe{NFE}.png").is_file() for t in bench.TABLES)


def test_missing_router_is_named(bench, stand_ins, tmp_path):
    from l2c_compile.errors import L2CError

    with pytest.raises(L2CError, match=f"router {DIT}-ddim-6.safetensors not found"):
        bench.build_rows(["1"], DIT, UVIT, [6], [NFE], NFE)


def test_rows_do_not_depend_on_batch_or_workers(bench, stand_ins, tmp_path):
    """Same seeds, smaller batches drawn by two workers: the same samples, so the same scores."""
    one, two = tmp_path / "one", tmp_path / "two"
    bench.main(_argv(one, "1"))
    bench.main([*_argv(two, "1"), "--batch", "3", "--workers", "2"])
    rows = [
        [json.loads(x) for x in (out / "quality.jsonl").read_text().splitlines()]
        for out in (one, two)
    ]
    assert len(rows[0]) == len(rows[1]) == 3
    assert rows[1][0]["env"]["workers"] == 2 and rows[1][0]["env"]["batch"] == 3
    for a, b in zip(*rows, strict=True):
        assert a["method"] == b["method"]
        for key in ("fid", "fid_delta", "class_accuracy", "precision", "recall"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["method"], key)


def test_front_scores_every_point_at_every_seed_and_resumes(
    bench, stand_ins, tmp_path, monkeypatch
):
    """--front: steps from NFE/2 up, L2C at each θ and λ, heuristics, static baselines; seed-major lines, report."""
    out = tmp_path / "results"
    argv = [
        *("--front", f"{DIT}:{NFE}", "--samples", "10", "--seeds", "0,1", "--batch", "10"),
        *("--out", str(out), "--resume", "--front-skip", "heuristic top cache"),
    ]
    bench.main(argv)
    lines = [json.loads(x) for x in (out / "quality-front.jsonl").read_text().splitlines()]
    methods = [r["method"] for r in lines if r["seed"] == 0]
    assert methods[:3] == ["steps DDIM-2", "steps DDIM-3", "steps DDIM-4"]
    assert "L2C θ=0.1" in methods and "L2C θ=0.95" in methods and "L2C λ=0.001 θ=0.1" in methods
    assert "heuristic random cache" in methods and "heuristic top cache" not in methods
    assert {"baseline FORA-2", "baseline FORA-3", "baseline step-mask 1/1/2", "baseline step-mask 2/1/2"} <= set(methods)
    fora2 = next(r for r in lines if r["method"] == "baseline FORA-2")
    assert fora2["kind"] == "baseline" and fora2["macs"] < fora2["macs_ref"]
    assert [r["seed"] for r in lines] == [0] * len(methods) + [1] * len(methods)  # seed-major
    ref = next(r for r in lines if r["method"] == "steps DDIM-4" and r["seed"] == 1)
    assert ref["fid_delta"] == 0 and ref["psnr"] is None and ref["macs"] == ref["macs_ref"]
    fewer = next(r for r in lines if r["method"] == "steps DDIM-2")
    assert fewer["macs"] == ref["macs"] // 2 and fewer["psnr"] > 0
    md = (out / "quality-front.md").read_text()
    assert f"{DIT}, NFE {NFE}: K = 10, seeds [0, 1]" in md and "L2C θ=0.9" in md
    assert (out / f"quality-front-{DIT}-nfe{NFE}.png").is_file()

    def no_sampling(*args, **kwargs):
        raise AssertionError("--resume sampled a point that was already done")

    monkeypatch.setattr(bench.Runner, "draw", no_sampling)
    bench.main(argv)
    assert len((out / "quality-front.jsonl").read_text().splitlines()) == len(lines)
    # --report-only: the report rebuilt from the rows measured so far, none sampled, none dropped
    rows_before = (out / "quality-front.jsonl").read_text()
    (out / "quality-front.md").unlink()
    bench.main(["--front", f"{DIT}:{NFE}", "--out", str(out), "--report-only"])
    assert (out / "quality-front.jsonl").read_text() == rows_before
    assert f"{DIT}, NFE {NFE}: K = 10, seeds [0, 1]" in (out / "quality-front.md").read_text()


def test_front_verdict_is_paired_per_seed():
    import quality_front as qf

    def point(kind, macs, per_seed):
        return {
            "kind": kind,
            "macs": macs,
            "per_seed": {s: {"fid_delta": v, "psnr": p} for s, (v, p) in per_seed.items()},
        }

    steps = [
        point("steps", 10, {0: (4.0, 30.0), 1: (8.0, 34.0)}),
        point("steps", 20, {0: (0.0, None), 1: (0.0, None)}),
    ]
    below = point("L2C", 15, {0: (1.0, 33.0), 1: (3.0, 35.0)})  # curve: 2.0 and 4.0 at 15
    v = qf.verdict(below, steps, "fid_delta")
    assert v["call"] == "better" and v["diffs"] == pytest.approx([-1.0, -1.0])
    mixed = point("L2C", 15, {0: (3.0, 33.0), 1: (3.0, 35.0)})
    assert qf.verdict(mixed, steps, "fid_delta")["call"] == "tie"
    assert qf.verdict(below, steps, "psnr")["call"] == "n/a"  # the reference has no PSNR
    outside = point("L2C", 5, {0: (1.0, 1.0), 1: (1.0, 1.0)})
    assert qf.verdict(outside, steps, "fid_delta")["call"] == "n/a"
    worse = point("L2C", 12, {0: (9.0, 20.0), 1: (9.0, 20.0)})
    assert qf.verdict(worse, steps, "fid_delta")["call"] == "worse"


def test_front_report_keeps_points_scored_at_fewer_seeds(tmp_path):
    """A point scored at one seed of three is reported at that seed and says so; the others keep
    all three (the report once cut every point down to the seeds all points shared)."""
    import quality_front as qf

    def line(method, kind, macs, seed, fid_delta, psnr):
        return {
            "model": "M", "ref_nfe": 4, "samples": 10, "key": method, "method": method,
            "kind": kind, "nfe": 4, "macs": macs, "removed": 0, "removable": None, "seed": seed,
            "fid_delta": fid_delta, "psnr": psnr, "fid": 50.0 + fid_delta,
        }

    rows = []
    for seed in (0, 1, 2):
        rows += [line("steps A-2", "steps", 2e9, seed, 6.0 + seed, 30.0),
                 line("steps A-4", "steps", 4e9, seed, 0.0, None)]
    rows.append(line("L2C θ=0.5", "L2C", 3e9, 0, 1.0, 40.0))
    jsonl = tmp_path / "quality-front.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    qf.write_report(jsonl, tmp_path, "# header")
    md = (tmp_path / "quality-front.md").read_text()
    assert "M, NFE 4: K = 10, seeds [0, 1, 2] (fewer where a point says so)" in md
    assert "| steps A-2 | 4 | 2.000 | 0 | 7.00 [6.00, 8.00] |" in md  # all three seeds kept
    assert "| L2C θ=0.5 (seeds [0] only) |" in md
    assert "**one seed**" in md  # the verdict does not call one seed better or worse
    assert (tmp_path / "quality-front-M-nfe4.png").is_file()
