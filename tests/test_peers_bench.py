"""benchmarks/peers.py: argument handling, the cache-dit mask matched to an l2c schedule, ratios,
limits, the guard when cache-dit is missing (fast), and the whole harness at tiny size (slow)."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.helpers import bench_script


@pytest.fixture(scope="module")
def peers():
    leaks = ("latency", "latency_exec", "latency_diffusers", "common", "peer_pipelines", "cache_dit_match")
    with bench_script("peers.py", "bench_peers", leaks) as module:
        yield module


TINY = ["--tiny", "--device", "cpu", "--dtype", "float32", "--threads", "1", "--repeats", "1",
        "--executor-budget", "0"]  # fmt: skip


def test_list_orders_cheap_rows_of_every_batch_before_compiles(peers, capsys):
    assert peers.main(["--pipeline", "dit", "--batches", "8,1", "--device", "cpu", "--list"]) == []
    lines = capsys.readouterr().out.splitlines()
    names = [line.split()[2] for line in lines]
    batches = [line.split()[1] for line in lines]
    cheap = ["pipeline-eager", "l2c-uncached", "l2c-l2c", "cache-dit-static", "cache-dit-dynamic"]
    compiled = ["torch-compile-default", "cache-dit-static+compile", "cache-dit-dynamic+compile",
                "torch-compile-max-autotune-no-cudagraphs"]  # fmt: skip
    assert names == cheap * 2 + compiled * 2  # no CUDA: no graph rows, no reduce-overhead
    assert batches == ["n=8"] * 5 + ["n=1"] * 5 + ["n=8"] * 4 + ["n=1"] * 4
    on_cuda = peers.plan_rows(peers.parse_args(["--device", "cuda", "--batches", "1"]))
    assert [n for n, _ in on_cuda][3:5] == ["l2c+graph-uncached", "l2c+graph-l2c"]
    assert "torch-compile-reduce-overhead" in [n for n, _ in on_cuda]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--executors", "l2c-fast"], "unknown executor 'l2c-fast'"),
        (["--batches", "8,x"], "--batches takes whole numbers"),
        (["--batches", "0"], "at least one batch size"),
        (["--steps", "1"], "--steps must be at least 2"),
    ],
)
def test_bad_arguments_are_one_line_errors(peers, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        peers.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_matched_mask_removes_about_the_schedules_compute(peers):
    # DiT-XL/2's DDIM20 router skips 248 of 560 cache-step sublayers (attn and MLP of equal MACs
    # here): 124 blocks' worth; cache-dit's F8B0 skips 20 of 28 blocks per cached step → 6 steps.
    block = 10
    step = len(peers.skipped_blocks((28,))) * block
    mask = peers.matched_mask(20, step, 124 * block)
    assert len(mask) == 20 and mask.count(0) == 6
    assert mask[:4] == [1, 1, 1, 1] and mask[-1] == 1  # lead steps and the last step compute
    cached = [i for i, m in enumerate(mask) if m == 0]
    assert max(b - a for a, b in itertools.pairwise(cached)) <= 3  # spread, not bunched
    assert peers.matched_mask(20, step, 0).count(0) == 1  # at least one cached step
    assert peers.matched_mask(10, 4 * block, 10**9).count(0) == 7  # at most every free step


def test_skipped_blocks_follow_each_list_cache_dit_walks(peers):
    assert peers.skipped_blocks((12,)) == tuple(range(8, 12))
    assert peers.skipped_blocks((19 + 38,)) == tuple(range(8, 57))  # FLUX, cache-dit's default: one list
    assert peers.skipped_blocks((19, 38)) == (*range(8, 19), *range(27, 57))  # two lists: F8 in each
    assert peers.skipped_blocks((10, 5), fn=2, bn=1) == (2, 3, 4, 5, 6, 7, 8, 12, 13)
    assert peers.skipped_blocks((6,)) == ()  # fewer blocks than Fn: nothing to skip


def test_cache_dit_trajectory_counts_skipped_blocks_like_a_schedule(peers):
    from l2c_compile.families.vocabulary import Layout
    from l2c_compile.metrics.macs import MacCount, trajectory_macs

    count = MacCount(total=1000, per_kind={"attn": 20, "mlp": 30})
    traj = peers.CacheDiTTrajectory(nfe=4, layout=Layout.uniform(10), lists=(10,), cached_steps=(1, 2), fn=8)
    assert [c.reused("mlp") for c in traj.calls] == [(), (8, 9), (8, 9), ()]
    full, cached = trajectory_macs((count, 10), traj)
    assert (full, cached) == (4000, 4000 - 2 * 2 * 50)


def _sd35_like(depth: int = 12, dual: int = 6):
    """An SD3.5-shaped layout (attn2 in the first ``dual`` blocks, no text MLP in the last) and a
    MacCount whose sublayers differ from block to block, as module_macs reports them."""
    from l2c_compile.families.vocabulary import Layout
    from l2c_compile.metrics.macs import MacCount

    layout = Layout(((dual, ("attn", "attn2", "mlp", "txt_mlp")), (depth - dual - 1, ("attn", "mlp", "txt_mlp")),
                     (1, ("attn", "mlp"))))  # fmt: skip
    cost = {"attn": 40, "attn2": 30, "mlp": 80, "txt_mlp": 7}
    per_key = {(k, b): cost[k] + (5 if k == "attn" and b == depth - 1 else 0)  # the last block's attn differs
               for b in range(depth) for k in layout.kinds_of(b)}
    return layout, MacCount(total=10**4, per_kind={"attn2": 30, "mlp": 80, "txt_mlp": 7}, per_key=per_key)


def test_block_macs_sum_each_blocks_own_sublayers():
    from l2c_compile.metrics.macs import block_macs

    layout, count = _sd35_like()
    sums = block_macs(count, layout)
    assert sums[:6] == [40 + 30 + 80 + 7] * 6  # attn2 only where the block has it
    assert sums[6:11] == [40 + 80 + 7] * 5
    assert sums[11] == 45 + 80  # no text MLP, its own attention cost
    assert sum(sums) == sum(count.per_key.values())


def test_matched_mask_on_a_non_uniform_layout_removes_what_the_schedule_removes(peers):
    from l2c_compile.metrics.macs import trajectory_macs
    from l2c_compile.samplers import make_plan
    from l2c_compile.schedule import heuristic

    layout, count = _sd35_like()
    plan = make_plan("flow-euler", 28, shift=3.0)
    sched = heuristic("random", plan, model="t", depth=layout.depth, fraction=0.15, seed=0, kinds=layout)
    full, cached = trajectory_macs((count, layout.depth), sched)
    removed = full - cached
    skipped = peers.skipped_blocks((layout.depth,))
    per_block = [40 + 80 + 7] * 3 + [45 + 80]  # blocks 8–11: no attn2, the last without its text MLP
    step = sum(per_block)
    mask = peers.matched_mask(plan.nfe, step, removed)
    traj = peers.CacheDiTTrajectory(plan.nfe, layout, (layout.depth,), tuple(i for i, m in enumerate(mask) if not m))
    cd_full, cd_cached = trajectory_macs((count, layout.depth), traj)
    assert skipped == (8, 9, 10, 11) and cd_full == full
    assert cd_full - cd_cached == mask.count(0) * step  # every cached step removes exactly its blocks' sublayers
    assert 1 < mask.count(0) < 21  # not clamped: the match is to within half a cached step
    assert abs((cd_full - cd_cached) - removed) <= step / 2


def test_ratios_compare_rows_within_one_pipeline_and_batch(peers):
    def row(executor, median, batch=8, **extra):
        return {"pipeline": "DiTPipeline", "batch": batch, "executor": executor, "median_s": median, **extra}

    rows = [row("pipeline-eager", 0.40), row("l2c+graph-uncached", 0.25),
            row("l2c+graph-l2c", 0.20, ideal_speedup=1.25), row("torch-compile-default", 0.30),
            row("torch-compile-reduce-overhead", 0.24), row("cache-dit-static", 0.32, ideal_speedup=1.3),
            row("cache-dit-static+compile", 0.26, ideal_speedup=1.3), row("pipeline-eager", 0.1, batch=1),
            {"pipeline": "DiTPipeline", "batch": 8, "executor": "cache-dit-dynamic", "skipped": "x"}]  # fmt: skip
    by = {(r["executor"], r["batch"]): r for r in peers.peer_ratios(rows)}
    l2c = by["l2c+graph-l2c", 8]
    assert l2c["speedup_vs_torch_compile"] == pytest.approx(0.24 / 0.20)  # the fastest mode
    assert l2c["speedup_vs_cache_dit_static"] == pytest.approx(0.26 / 0.20)  # the faster cache-dit row
    assert l2c["speedup_vs_pipeline"] == pytest.approx(2.0)  # batch 8's pipeline row, not batch 1's
    assert l2c["share_of_ideal"] == pytest.approx(0.25 / 0.20 / 1.25)
    assert by["cache-dit-static+compile", 8]["share_of_ideal"] == pytest.approx(0.30 / 0.26 / 1.3)
    assert "speedup_vs" not in by["cache-dit-dynamic", 8] and "median_s" not in rows[-1]


def test_hard_limit_stops_a_row_that_runs_too_long(peers):
    t0 = time.perf_counter()
    with pytest.raises(peers.RowTimeout), peers.hard_limit(0.2):
        while True:
            time.sleep(0.01)
    assert time.perf_counter() - t0 < 5
    with peers.hard_limit(5):  # a row within its limit is left alone, and the timer is cleared
        pass
    time.sleep(0.05)


def test_without_cache_dit_its_rows_say_so_and_the_rest_runs(peers, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setattr(peers, "cache_dit_version", lambda: None)
    out = tmp_path / "p.jsonl"
    rows = peers.main([*TINY, "--steps", "4", "--batches", "1", "--executors",
                       "pipeline-eager,cache-dit-static,torch-compile-default", "--deadline", "600",
                       "--compile-estimate", "1000", "--out", str(out)])  # fmt: skip
    assert [r["executor"] for r in rows] == ["pipeline-eager", "cache-dit-static", "torch-compile-default"]
    assert rows[0]["median_s"] > 0 and rows[0]["cache_dit"] == "not importable"
    assert rows[1]["skipped"] == "cache-dit not importable"
    assert rows[2]["skipped"].startswith("time limit: needs ~1000 s")  # would not fit the deadline
    assert rows[0]["ideal_l2c"] > 1 and rows[0]["ideal_cache_dit_static"] > 1
    assert [json.loads(line)["executor"] for line in out.read_text().splitlines()] == [
        "pipeline-eager", "cache-dit-static", "torch-compile-default"]  # fmt: skip
    table = out.with_suffix(".md").read_text()
    assert "| cache-dit-static |" in table and "cache-dit not importable" in table


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["dit", "pixart"])
def test_whole_harness_at_tiny_size(peers, tmp_path, pipeline):
    """Every CPU row of the harness end to end, cache-dit included (minutes: inductor compiles)."""
    pytest.importorskip("cache_dit")
    out = tmp_path / "p.jsonl"
    names = ["pipeline-eager", "l2c-uncached", "l2c-l2c", "cache-dit-static", "cache-dit-dynamic",
             "torch-compile-default", "cache-dit-static+compile"]  # fmt: skip
    rows = peers.main([*TINY, "--pipeline", pipeline, "--steps", "6", "--batches", "2,1",
                       "--executors", ",".join(names), "--out", str(out)])  # fmt: skip
    assert [(r["executor"], r["batch"]) for r in rows] == [(n, b) for n in names[:5] for b in (2,)] + [
        (n, 1) for n in names[:5]] + [(n, b) for b in (2, 1) for n in names[5:]]  # fmt: skip
    errors = [(r["executor"], r.get("error") or r.get("skipped")) for r in rows if "median_s" not in r]
    assert errors == []
    for r in rows:
        assert r["min_s"] <= r["median_s"] <= r["max_s"] and r["first_s"] > 0
    static = [r for r in rows if r["executor"].startswith("cache-dit-static")]
    mask = rows[0]["cache_dit_mask"]
    for r in static:  # cache-dit cached exactly the masked steps, and the MACs follow them
        assert r["cached_steps"] == [i for i, m in enumerate(mask) if m == 0]
        assert r["ideal_speedup"] == pytest.approx(rows[0]["ideal_cache_dit_static"])
    # matched: the two ideal ratios within one cached step's worth of each other
    assert abs(rows[0]["ideal_cache_dit_static"] - rows[0]["ideal_l2c"]) < 0.1
    assert len(out.read_text().splitlines()) == len(rows)


def test_tiny_sd3_rows_match_the_pipeline_and_record_the_layout(peers, tmp_path):
    """SD3.5-medium's structure at tiny size (12 joint blocks, attn2 in the first 6): the l2c rows
    share the pipeline's weights, the uncached twin reproduces pipe(...), the schedule saves."""
    pytest.importorskip("diffusers")
    names = ["pipeline-eager", "l2c-uncached", "l2c-l2c"] + (["cache-dit-static"] if peers.cache_dit_version() else [])
    out = tmp_path / "p.jsonl"
    rows = peers.main([*TINY, "--pipeline", "sd3", "--steps", "6", "--batches", "1", "--executors", ",".join(names),
                       "--out", str(out)])  # fmt: skip
    assert [r["executor"] for r in rows] == names
    assert [r for r in rows if "median_s" not in r] == []
    by = {r["executor"]: r for r in rows}
    assert by["l2c-uncached"]["max_rel_diff_vs_pipeline"] <= 1e-5  # the same computation
    assert by["l2c-l2c"]["max_rel_diff_vs_pipeline"] > 1e-4  # the cache engaged
    r0 = rows[0]
    assert r0["pipeline"] == "StableDiffusion3Pipeline" and r0["sampler"] == "flow-euler" and r0["cfg"]
    assert r0["sublayer_groups"] == [[6, ["attn", "attn2", "mlp", "txt_mlp"]], [5, ["attn", "mlp", "txt_mlp"]],
                                     [1, ["attn", "mlp"]]]  # fmt: skip
    assert r0["ideal_l2c"] > 1 and r0["ideal_cache_dit_static"] > 1
    assert by["l2c-l2c"]["ideal_speedup"] == r0["ideal_l2c"]
    assert r0["schedule"]["skipped_fraction"] == pytest.approx(0.40, abs=0.02)
    if "cache-dit-static" in by:  # cache-dit cached the masked steps
        assert by["cache-dit-static"]["cached_steps"] == [i for i, m in enumerate(r0["cache_dit_mask"]) if m == 0]


def test_a_pipeline_without_its_drop_in_is_refused_in_one_line(peers, capsys, monkeypatch):
    from l2c_compile.diffusers import pipelines

    monkeypatch.delitem(pipelines.PIPELINES, "FluxPipeline")
    with pytest.raises(SystemExit) as exc:
        peers.main([*TINY, "--pipeline", "flux", "--batches", "1"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert err == "peers.py: error: --pipeline flux needs a compile_pipeline drop-in for FluxPipeline"


def test_tiny_flux_rows_match_the_pipeline(peers, tmp_path):
    """FLUX.1-dev's structure at tiny size (10 double + 10 single blocks), embedded guidance, no CFG."""
    names = ["pipeline-eager", "l2c-uncached", "l2c-l2c"] + (["cache-dit-static"] if peers.cache_dit_version() else [])
    rows = peers.main([*TINY, "--pipeline", "flux", "--steps", "4", "--batches", "1", "--executors", ",".join(names),
                       "--out", str(tmp_path / "p.jsonl")])  # fmt: skip
    assert [r for r in rows if "median_s" not in r] == []
    by = {r["executor"]: r for r in rows}
    assert by["l2c-uncached"]["max_rel_diff_vs_pipeline"] <= 1e-5
    assert rows[0]["cache_dit_blocks"] == [20] and not rows[0]["cfg"] and rows[0]["ideal_l2c"] > 1  # one list
    if "cache-dit-static" in by:
        assert by["cache-dit-static"]["cached_steps"] == [i for i, m in enumerate(rows[0]["cache_dit_mask"]) if not m]


def test_tiny_wan_rows_match_the_pipeline(peers, tmp_path):
    """Wan 2.1's structure at tiny size (10 blocks, 5 frames), flow UniPC, CFG: videos compared."""
    rows = peers.main([*TINY, "--pipeline", "wan", "--steps", "4", "--batches", "1",
                       "--executors", "pipeline-eager,l2c-uncached,l2c-l2c", "--out", str(tmp_path / "p.jsonl")])
    by = {r["executor"]: r for r in rows}
    assert set(by) == {"pipeline-eager", "l2c-uncached", "l2c-l2c"} and all("median_s" in r for r in rows)
    assert by["l2c-uncached"]["max_rel_diff_vs_pipeline"] <= 1e-5 < by["l2c-l2c"]["max_rel_diff_vs_pipeline"]
    assert rows[0]["cfg"] and rows[0]["ideal_l2c"] > 1 and rows[0]["pipeline"] == "WanPipeline"
