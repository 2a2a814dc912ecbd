"""benchmarks/compile_cost.py: cold and warm loads in fresh processes, rows and ratios written."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def compile_cost():
    threads = torch.get_num_threads()
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_compile_cost", BENCH / "compile_cost.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        for name in ("bench_compile_cost", "latency", "latency_exec", "common"):
            sys.modules.pop(name, None)
        sys.path.remove(str(BENCH))
        torch.set_num_threads(threads)


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
    pytest.importorskip("torch.backends.mkldnn")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
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
        assert min(r["aten_gflops"], r["onednn_gflops"], r["onednn-packed_gflops"]) > 0
        assert r["cpu"] and r["threads"] == 1
    assert "oneDNN ÷ aten" in out.with_suffix(".md").read_text()
