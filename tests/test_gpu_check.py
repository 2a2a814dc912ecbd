"""The one-shot GPU script's dry path (every machine without CUDA) and its target summary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_summary  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry path is for machines without CUDA")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_without_cuda_lists_its_steps_and_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "gpu"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu_check: no CUDA device on this machine; nothing was run")
    steps = [line.split(",")[0].strip(" [") for line in lines[1:]]
    assert steps == ["tests", "latency", "peers-dit", "peers-pixart", "summary"]
    assert "-m gpu" in lines[1] and "tests/test_cuda_graph.py" in lines[1]
    limits = [int(line.split("≤ ")[1].split(" s]")[0]) for line in lines[1:]]
    assert sum(limits) <= 9 * 60 - 30  # the default steps fit 9 minutes, with room for the wheels
    assert "--pipeline dit --batches 8,1" in lines[3] and "--pipeline pixart" in lines[4]
    routers = ".routers" if (REPO / ".routers").is_dir() else "../shared/data/routers"
    assert f"--routers-dir {routers} " in lines[2] and f"--routers-dir {routers} " in lines[3]
    assert "--peers" in lines[5] and "peers-pixart.jsonl" in lines[5]
    assert not out.exists()  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry path is for machines without CUDA")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_lists_chosen_steps_with_the_routers_it_was_given(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "gpu"), "kernels,peers-dit"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "L2C_ROUTERS_DIR": "/elsewhere/routers"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]
    assert [line.split(",")[0].strip(" [") for line in lines] == ["kernels", "peers-dit"]
    assert "benchmarks/kernel_bandwidth.py" in lines[0]
    assert "--routers-dir /elsewhere/routers " in lines[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry path is for machines without CUDA")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_full_size_sd3_flux_and_wan_peers_are_opt_in_steps_whose_arguments_parse(tmp_path: Path) -> None:
    from tests.helpers import bench_script

    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "gpu"), "peers-sd3,peers-flux,peers-wan"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()[1:]
    assert [line.split(",")[0].strip(" [") for line in lines] == ["peers-sd3", "peers-flux", "peers-wan"]
    limits = [int(line.split("≤ ")[1].split(" s]")[0]) for line in lines]
    assert all(limit <= 240 for limit in limits)  # each opt-in step bounded to 4 minutes
    leaks = ("latency", "latency_exec", "latency_diffusers", "common", "cache_dit_match", "peer_pipelines")
    with bench_script("peers.py", "bench_peers_dry", leaks) as peers:
        for line, pipeline, limit in zip(lines, ("sd3", "flux", "wan"), limits, strict=True):
            argv = line.split("benchmarks/peers.py ", 1)[1].split()
            args = peers.parse_args(argv)  # the step's arguments, as peers.py reads them
            assert args.pipeline == pipeline and args.batch_list == [1] and args.steps == args.entry.steps
            assert args.deadline < limit and args.out == str(tmp_path / "gpu" / f"peers-{pipeline}.jsonl")
            assert [n for n, _ in peers.plan_rows(args)] == [
                "pipeline-eager", "l2c-uncached", "l2c-l2c", "l2c+graph-l2c", "cache-dit-static",
                "cache-dit-dynamic", "torch-compile-default"]  # fmt: skip
    usage = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    assert all(f"peers-{p}" in usage.split("set -u")[0] for p in ("sd3", "flux", "wan"))


def _row(executor: str, batch: int, median: float, **extra: object) -> dict[str, object]:
    return {
        "model": "DiT-XL/2",
        "dtype": "bfloat16",
        "sampler": "ddim",
        "nfe": 20,
        "batch": batch,
        "executor": executor,
        "median_s": median,
        "device_name": "Test GPU",
        **extra,
    }


def test_summary_sets_each_target_beside_the_measurement(tmp_path: Path) -> None:
    rows = [
        _row("eager-l2c", 8, 0.40),
        _row("compiled-uncached", 8, 0.30, peak_extra_bytes=100 * 2**20),
        _row(
            "compiled-l2c",
            8,
            0.18,
            share_of_ideal=1.3,
            ideal_speedup=1.285,
            speedup_vs_same_uncached=1.67,
            peak_extra_bytes=200 * 2**20,
            cache_bytes_expected=50 * 2**20,
        ),
        _row(
            "compiled-l2c",
            1,
            0.2,
            share_of_ideal=0.8,
            ideal_speedup=1.285,
            speedup_vs_same_uncached=1.03,
        ),
    ]
    full = tmp_path / "lat.jsonl"
    full.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    # a killed run leaves its rows in the partial file: they count too
    full.with_suffix(".partial.jsonl").write_text(json.dumps(rows[3]) + "\n")
    table = {t: (m, v) for t, m, v in gpu_summary.targets(gpu_summary.load(full))}
    assert table["DiT-XL/2 bf16 DDIM-20 n=8: compiled L2C ≤ 0.16 s"] == (
        "0.1800 s (compiled-l2c)",
        "NOT met",
    )
    assert table["DiT-XL/2 bf16 DDIM-20 n=1: compiled L2C ≤ 0.035 s"][1] == "NOT met"
    share = [v for t, (_, v) in table.items() if "n=1 compiled-l2c: speedup" in t]
    assert share == ["NOT met"]
    memory = [(m, v) for t, (m, v) in table.items() if "peak memory" in t]
    assert memory == [("200 MiB vs 150 MiB", "NOT met")]


def test_summary_of_nothing_says_not_measured(tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    gpu_summary.main([str(tmp_path / "missing.jsonl"), "--out", str(out)])
    text = out.read_text()
    assert "not measured" in text and "met |" not in text


def _peer(executor: str, median: float | None, batch: int = 8, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"pipeline": "DiTPipeline", "dtype": "bfloat16", "batch": batch,
                              "executor": executor, "device_name": "Test GPU", "tiny": False, **extra}
    if median is not None:
        row["median_s"] = median
    return row


def test_summary_sets_the_peer_targets_beside_the_peers_rows(tmp_path: Path) -> None:
    rows = [
        _peer("pipeline-eager", 0.40),
        _peer("l2c+graph-uncached", 0.19),
        _peer("l2c+graph-l2c", 0.15, ideal_speedup=1.285),
        _peer("torch-compile-default", 0.22),
        _peer("torch-compile-reduce-overhead", 0.20),
        _peer("cache-dit-static", 0.30, ideal_speedup=1.27),
        _peer("cache-dit-static+compile", 0.17, ideal_speedup=1.27),
        _peer("torch-compile-max-autotune-no-cudagraphs", None, skipped="time limit: needs ~240 s, 30 s left"),
        _peer("l2c+graph-l2c", 0.04, batch=1, ideal_speedup=1.285),
        _peer("pipeline-eager", 0.9, pipeline="PixArtAlphaPipeline", batch=1),
        _peer("l2c-l2c", 0.5, pipeline="PixArtAlphaPipeline", batch=1, ideal_speedup=1.25),
        _peer("cache-dit-static", 0.7, pipeline="PixArtAlphaPipeline", batch=1, ideal_speedup=1.26),
        _peer("l2c-l2c", 0.001, tiny=True),  # CPU smoke rows never count
    ]
    path = tmp_path / "peers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "summary.md"
    gpu_summary.main([str(tmp_path / "no-latency.jsonl"), "--peers", str(path), "--out", str(out)])
    table = {t: (m, v) for t, m, v in gpu_summary.peer_targets(gpu_summary.load(path))}
    assert table["DiTPipeline bfloat16 n=8: compile_pipeline L2C ≤ 0.16 s (whole pipe(...) call)"] == (
        "0.1500 s (l2c+graph-l2c)", "met")
    assert table["DiTPipeline bfloat16 n=1: compile_pipeline L2C ≤ 0.035 s (whole pipe(...) call)"][1] == "NOT met"
    tc = table["DiTPipeline bfloat16 n=8: L2C over the fastest torch.compile mode measured ≥ 1.25×"]
    assert tc == ("1.33× (torch-compile-reduce-overhead 0.2000 s)", "met")
    cd = [(m, v) for t, (m, v) in table.items() if t.startswith("DiTPipeline bfloat16 n=8: L2C over cache-dit static")]
    assert cd == [("1.13× (cache-dit-static+compile 0.1700 s)", "NOT met")]  # the faster cache-dit row
    pixart = [v for t, (_, v) in table.items() if t.startswith("PixArtAlphaPipeline bfloat16 n=1: L2C over cache-dit")]
    assert pixart == ["met"]  # 0.7 / 0.5 = 1.4×
    assert table["DiTPipeline bfloat16 n=8 torch-compile-max-autotune-no-cudagraphs"][1] == "not run"
    assert not any("0.0010" in m for m, _ in table.values())
    text = out.read_text()
    assert "# GPU check on Test GPU" in text and "Peers on diffusers pipelines" in text
