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
    leaks = ("latency", "latency_exec", "latency_diffusers", "common")
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
    mask = peers.matched_mask(20, 28, block, 124 * block)
    assert len(mask) == 20 and mask.count(0) == 6
    assert mask[:4] == [1, 1, 1, 1] and mask[-1] == 1  # lead steps and the last step compute
    cached = [i for i, m in enumerate(mask) if m == 0]
    assert max(b - a for a, b in itertools.pairwise(cached)) <= 3  # spread, not bunched
    assert peers.matched_mask(20, 28, block, 0).count(0) == 1  # at least one cached step
    assert peers.matched_mask(10, 12, block, 10**9).count(0) == 7  # at most every free step


def test_cache_dit_trajectory_counts_skipped_blocks_like_a_schedule(peers):
    from l2c_compile.metrics.macs import MacCount, trajectory_macs

    count = MacCount(total=1000, per_kind={"attn": 20, "mlp": 30})
    traj = peers.CacheDiTTrajectory(nfe=4, depth=10, kinds=("attn", "mlp"), cached_steps=(1, 2), fn=8)
    assert [c.reused("mlp") for c in traj.calls] == [(), (8, 9), (8, 9), ()]
    full, cached = trajectory_macs((count, 10), traj)
    assert (full, cached) == (4000, 4000 - 2 * 2 * 50)


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
