"""benchmarks/latency.py on CPU with the tiny models: rows, ratios, results files, grid and limits."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import bench_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ROUTERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "routers"


@pytest.fixture(scope="module")
def latency():
    with bench_script("latency.py", "bench_latency", ("latency_exec", "common")) as module:
        yield module


TINY = ["--device", "cpu", "--threads", "1", "--repeats", "1", "--seed", "0"]


def test_matrix_cell_measures_every_executor_and_writes_results(latency, tmp_path):
    out = tmp_path / "lat.jsonl"
    rows = latency.main(
        [
            "--matrix",
            "--only",
            "DiT-Tiny",
            "--batches",
            "1,2",
            "--dtypes",
            "bfloat16",
            "--samplers",
            "ddim-4",
            *TINY,
            "--out",
            str(out),
        ]
    )
    names = ["eager-uncached", "eager-l2c", "compiled-uncached", "compiled-l2c"]
    assert [r["executor"] for r in rows] == names * 2
    assert [r["batch"] for r in rows] == [1] * 4 + [2] * 4
    for r in rows:
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"] and r["repeats"] == 1
        assert r["dtype"] == "bfloat16" and r["sampler"] == "ddim" and r["nfe"] == 4
        assert r["speedup_vs_eager-uncached"] == pytest.approx(
            next(x for x in rows if x["batch"] == r["batch"] and x["executor"] == "eager-uncached")[
                "median_s"
            ]
            / r["median_s"]
        )
        assert r["schedule"]["source"]["kind"] == "heuristic" and r["ideal_speedup"] > 1.0
    compiled = [r for r in rows if r["executor"] == "compiled-l2c"]
    for r in compiled:
        assert r["compile_s"] > 0 and r["share_of_ideal"] == pytest.approx(
            r["speedup_vs_same_uncached"] / r["ideal_speedup"]
        )
    # Expected cache bytes scale with the rows: batch 2 holds twice batch 1's (bf16: 2 bytes each).
    assert compiled[1]["cache_bytes_expected"] == 2 * compiled[0]["cache_bytes_expected"] > 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["executor"] for line in lines] == names * 2
    md = out.with_suffix(".md").read_text()
    assert md.count("### DiT-Tiny · ddim-4 · batch") == 2 and "| compiled-l2c |" in md


def test_single_run_keeps_its_interface(latency, tmp_path):
    out = tmp_path / "one.jsonl"
    rows = latency.main(
        [
            "--model",
            "DiT-Tiny",
            "--nfe",
            "4",
            "--batch",
            "1",
            "--skip-eager",
            "--fraction",
            "0.5",
            *TINY,
            "--out",
            str(out),
        ]
    )
    assert [r["executor"] for r in rows] == ["compiled-uncached", "compiled-l2c"]
    assert rows[1]["schedule"]["skipped_fraction"] == pytest.approx(0.5, abs=0.05)
    assert len(out.read_text().splitlines()) == 2


def test_time_limit_turns_the_rest_into_skipped_rows(latency, tmp_path):
    rows = latency.main(
        [
            "--matrix",
            "--only",
            "DiT-Tiny",
            "--batches",
            "1",
            "--dtypes",
            "float32",
            "--samplers",
            "ddim-4",
            "--time-limit",
            "0",
            *TINY,
            "--out",
            str(tmp_path / "x.jsonl"),
        ]
    )
    assert len(rows) == 4 and all(
        r["skipped"] == "time limit" and "median_s" not in r for r in rows
    )
    assert "time limit" in (tmp_path / "x.md").read_text()


def test_measure_respects_repeats_and_budget(latency):
    calls = []
    measure = sys.modules["latency_exec"].measure
    timing = measure(lambda: calls.append(1), "cpu", repeats=3, budget_s=100.0)
    assert len(calls) == 4 and timing["repeats"] == 3 and timing["first_s"] >= 0
    calls.clear()
    timing = measure(lambda: calls.append(1), "cpu", repeats=10, budget_s=0.0)
    assert len(calls) == 2 and timing["repeats"] == 1  # the budget still allows one timed run


def test_grid_lists_the_issue_matrix_and_refuses_bad_flags(latency, capsys):
    args = latency.parse_args(["--matrix", "--device", "cuda"])
    cells = latency.grid(args)
    assert len(cells) == 5 * 2 * 4 and all(batches == [1, 8, 32] for *_, batches in cells)
    assert {m for m, *_ in cells} == {"DiT-S/2", "DiT-XL/2", "DiT-XL/2-512", "DiT-L/2", "U-ViT-H/2"}
    assert {(m, s, n) for m, _, s, n, _ in cells} >= set(latency.RELEASED)
    with pytest.raises(SystemExit) as exc:
        latency.parse_args(["--cuda-graph", "--device", "cpu"])
    assert exc.value.code == 2 and "--cuda-graph needs --device cuda" in capsys.readouterr().err
    assert latency.main(["--matrix", "--list", "--device", "cpu", "--only", "DiT-Tiny"]) == []
    assert "DiT-Tiny" in capsys.readouterr().out


@pytest.mark.skipif(not ROUTERS.is_dir(), reason="needs shared/data/routers beside the checkout")
def test_matrix_schedules_use_released_routers_or_their_fraction(latency):
    from l2c_compile.models.registry import get_spec
    from l2c_compile.samplers import make_plan

    def schedule(name, nfe):
        spec = get_spec(name)
        plan = make_plan(
            "ddim", nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input
        )
        depth = spec.kwargs["depth"]
        return latency.matrix_schedule(spec, plan, depth, ROUTERS, 0.44, seed=0)

    released = schedule("DiT-XL/2", 20)
    assert released.source["kind"] == "router" and released.stats()["skipped_total"] == 248
    synthetic = schedule("DiT-L/2", 20)
    assert synthetic.source["kind"] == "heuristic"
    assert synthetic.stats()["skipped_fraction"] == pytest.approx(248 / 560, abs=2e-3)


@pytest.mark.parametrize("pipeline, flags", [
    ("dit", ["--latent", "8"]),
    # the peers benchmark's entries at their tiny width (the real width takes seconds per call)
    ("sd3", ["--tiny", "--depth", "3"]),
    ("flux", ["--tiny", "--depth", "2"]),
    ("wan", ["--tiny", "--depth", "2"]),
])
def test_diffusers_pipeline_row_measures_three_executors(tmp_path, pipeline, flags):
    pytest.importorskip("diffusers")
    path = BENCH / "latency_diffusers.py"
    spec = importlib.util.spec_from_file_location("bench_latency_diffusers", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCH))
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        rows = module.main(["--pipeline", pipeline, *flags, "--steps", "2", "--repeats", "1",
                            "--out", str(tmp_path / "l.jsonl"),
                            "--threads", str(torch.get_num_threads())])  # leave this process's threads alone
    finally:
        sys.path.remove(str(BENCH))
        for name in ("latency_exec", "common", spec.name):
            sys.modules.pop(name, None)
    assert [r["executor"] for r in rows] == ["pipeline-uncached", "compiled-uncached", "compiled-l2c"]
    assert rows[1]["max_rel_diff_vs_pipeline"] <= 1e-5 and rows[2]["ideal_speedup"] > 1
    assert all(r["median_s"] > 0 for r in rows) and (tmp_path / "l.md").read_text().count("| compiled-l2c |") == 1
    kinds = {"sd3": ["attn", "attn2", "mlp", "txt_mlp"], "flux": ["attn", "mlp", "txt_mlp"],
             "wan": ["attn", "cross", "mlp"]}
    if pipeline in kinds:  # the random schedule draws from every sublayer the model has
        assert rows[0]["sublayer_kinds"] == kinds[pipeline]


def test_executor_order_puts_graphs_and_peers_before_inductor_compiles(latency):
    """Executors are built, not run: the cheap ones first, inductor's many compiles last."""
    import argparse

    import latency_exec

    from l2c_compile.models.registry import build_model, get_spec, init_random
    from l2c_compile.samplers import make_plan

    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 0)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = latency.matrix_schedule(spec, plan, 3, None, 0.5, 0)

    def names(**flags: bool) -> list[str]:
        opts = argparse.Namespace(**{"inductor": False, "cuda_graph": False, "torch_compile": False,
                                     "no_inductor_graph": False, "skip_eager": False,
                                     "device": "cpu", **flags})  # fmt: skip
        g = latency_exec.build_group(spec, model, plan, sched, "float32", 4.0, opts)
        noise, labels = torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.long)
        return [ex.name for ex in latency_exec.executors_for(g, opts, noise, labels)]

    eager = ["eager-uncached", "eager-l2c", "compiled-uncached", "compiled-l2c"]
    assert names() == eager
    graphs = ["compiled+graph-uncached", "compiled+graph-l2c"]
    assert names(cuda_graph=True, no_inductor_graph=True) == eager + graphs
    assert names(cuda_graph=True, inductor=True, torch_compile=True) == [
        *eager, *graphs, "torch-compile-default-uncached",
        "inductor-uncached", "inductor+graph-uncached", "inductor-l2c", "inductor+graph-l2c",
    ]  # fmt: skip


def test_rows_are_written_as_they_are_measured(latency, tmp_path, monkeypatch):
    """A killed run keeps its measured rows in <out>.partial.jsonl; a finished one removes it."""
    out = tmp_path / "x.jsonl"
    args = ["--matrix", "--only", "DiT-Tiny", "--batches", "1", "--dtypes", "float32",
            "--samplers", "ddim-4", *TINY, "--out", str(out)]  # fmt: skip

    def killed(rows, path):
        raise KeyboardInterrupt  # as if the run were killed before the configuration's report

    with monkeypatch.context() as m:
        m.setattr(latency, "report", killed)
        with pytest.raises(KeyboardInterrupt):
            latency.main(args)
    kept = [json.loads(line) for line in latency.partial_path(out).read_text().splitlines()]
    assert [r["executor"] for r in kept] == [
        "eager-uncached", "eager-l2c", "compiled-uncached", "compiled-l2c"
    ] and all("median_s" in r for r in kept)  # fmt: skip
    latency.partial_path(out).unlink()
    rows = latency.main(
        ["--matrix", "--only", "DiT-Tiny", "--batches", "1", "--dtypes", "float32",
         "--samplers", "ddim-4", *TINY, "--out", str(out)]
    )  # fmt: skip
    assert rows and out.is_file() and not latency.partial_path(out).exists()
    assert latency.partial_path(out) == tmp_path / "x.partial.jsonl"


def test_regional_executors_and_the_executor_filter(latency, tmp_path):
    out = tmp_path / "lat.jsonl"
    rows = latency.main(
        ["--model", "DiT-Tiny", "--nfe", "4", "--regional", "--interleave", "--out", str(out),
         "--executors", "eager-l2c,regional-uncached,regional-l2c", *TINY]
    )
    assert [r["executor"] for r in rows] == ["eager-l2c", "regional-uncached", "regional-l2c"]
    l2c = rows[-1]
    assert l2c["speedup_vs_same_uncached"] > 0 and l2c["share_of_ideal"] > 0
