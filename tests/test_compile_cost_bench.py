"""benchmarks/compile_cost.py: cold and warm loads in fresh processes, rows and ratios written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from l2c_compile.runtime import features
from tests.helpers import bench_script

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def compile_cost():
    with bench_script("compile_cost.py", "bench_compile_cost", ("latency", "latency_exec", "common")) as module:
        yield module


def test_cold_then_warm_load_of_one_artifact_in_fresh_processes(compile_cost, tmp_path):
    out = tmp_path / "cost.jsonl"
    rows = compile_cost.main(["--model", "DiT-Tiny", "--nfe", "4", "--backends", "eager",
                              "--threads", "1", "--out", str(out)])
    assert [(r["backend"], r["trial"]) for r in rows] == [("eager", "cold"), ("eager", "warm")]
    for r in rows:
        assert r["load_s"] > 0 and r["first_call_s"] > 0 and r["call_s"] > 0
        assert r["compile_s"] >= 0 and r["l2c_passes_s"] > 0
        assert r["distinct_graphs"] >= 1 and r["fxgraph_cache_miss"] == 0  # eager: no inductor
    assert rows[0]["warm_over_cold_compile"] in (1.0, None)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["trial"] for w in written] == ["cold", "warm"]
    assert "÷ cold compile" in out.with_suffix(".md").read_text()


def test_gemm_benchmark_writes_every_path(tmp_path):
    if not features.has("onednn"):
        pytest.skip(features.missing("onednn"))
    sys.path.insert(0, str(BENCH))
    threads = torch.get_num_threads()
    try:
        spec = importlib.util.spec_from_file_location("bench_gemm", BENCH / "gemm_cpu.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out = tmp_path / "gemm.jsonl"
        module.SHAPES = [(24, 40)]
        rows = module.main(["--threads", "1", "--repeats", "1", "--rows", "8", "--out", str(out)])
    finally:
        sys.modules.pop("common", None)
        sys.path.remove(str(BENCH))
        torch.set_num_threads(threads)
    assert [(r["dtype"], r["m"]) for r in rows] == [
        ("float32", 8), ("float32", 2048), ("bfloat16", 8), ("bfloat16", 2048)
    ]
    for r in rows:
        feature = "onednn" if r["dtype"] == "float32" else "onednn_bf16"
        timed = ["aten", "onednn", "onednn-packed"] if features.has(feature) else ["aten"]
        assert min(r[f"{path}_gflops"] for path in timed) > 0
        assert ("onednn_gflops" in r) == features.has(feature)  # no row times a path the CPU lacks
        assert r["cpu"] and r["threads"] == 1
    assert "oneDNN ÷ aten" in out.with_suffix(".md").read_text()


def test_cpu_summary_sets_each_target_beside_its_measured_value(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_cpu_summary", BENCH / "cpu_summary.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))

    def lat(dtype, executor, median, **extra):
        return {"dtype": dtype, "executor": executor, "median_s": median, "ideal_speedup": 1.25,
                **extra}

    rows = [
        lat("float32", "eager-l2c", 50.0),
        lat("float32", "regional-l2c", 30.0, **{"speedup_vs_eager-l2c": 50 / 30, "gflops": 200.0,
            "speedup_vs_torch-compile-default-uncached": 2.0}),
        lat("bfloat16", "regional-l2c", 20.0, **{"speedup_vs_eager-l2c": 1.1,
            "speedup_vs_torch-compile-default-uncached": 1.1}),
        lat("bfloat16", "inductor-l2c", 18.0, **{"speedup_vs_eager-l2c": 1.2,
            "speedup_vs_torch-compile-default-uncached": 1.1}),
    ]
    (tmp_path / "latency-cpu-dit-xl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "gemm-cpu.jsonl").write_text(json.dumps({"dtype": "float32", "m": 2048,
                                                         "onednn_gflops": 400.0}) + "\n")
    cost = [{"backend": "regional", "trial": "cold", "compile_s": 10.0},
            {"backend": "regional", "trial": "warm", "compile_s": 1.5}]
    (tmp_path / "compile-cost.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cost))
    table = {t: (m, v) for t, m, v in module.summary(tmp_path)}
    assert table["float32: compiled L2C ≥ 1.3× eager reference L2C"][1] == "met"
    assert table["float32: ≥ 0.95 × ideal over torch.compile uncached"] == ("1.60 (2.00× / ideal 1.250×)", "met")
    assert table["float32: achieved GFLOP/s (of the GEMM peak)"][0] == "200 of 400 (50%)"
    bf16 = table["bfloat16: compiled L2C ≥ 1.3× eager reference L2C"]
    assert bf16 == ("1.20× (inductor-l2c 18.0 s)", "NOT met")  # the faster of the two backends
    assert table["bfloat16: ≥ 0.95 × ideal over torch.compile uncached"][1] == "NOT met"
    assert table["regional: second load ≤ 20 % of the cold compile"] == ("15% (1.5 s vs 10.0 s)", "met")
    assert table["inductor: second load ≤ 20 % of the cold compile"] == ("not measured", "–")
    assert "| target | measured | verdict |" in module.main([str(tmp_path)])
