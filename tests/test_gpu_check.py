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
    assert steps == ["tests", "kernels", "latency", "compiled", "summary"]
    assert "-m gpu" in lines[1] and "tests/test_cuda_graph.py" in lines[1]
    assert not out.exists()  # nothing written


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
    assert table["DiT-XL/2 bf16 DDIM-20 n=8: compiled L2C ≤ 0.19 s"] == (
        "0.1800 s (compiled-l2c)",
        "met",
    )
    assert table["DiT-XL/2 bf16 DDIM-20 n=1: compiled L2C ≤ 0.1 s"][1] == "NOT met"
    share = [v for t, (_, v) in table.items() if "n=1 compiled-l2c: speedup" in t]
    assert share == ["NOT met"]
    memory = [(m, v) for t, (m, v) in table.items() if "peak memory" in t]
    assert memory == [("200 MiB vs 150 MiB", "NOT met")]


def test_summary_of_nothing_says_not_measured(tmp_path: Path) -> None:
    out = tmp_path / "summary.md"
    gpu_summary.main([str(tmp_path / "missing.jsonl"), "--out", str(out)])
    text = out.read_text()
    assert "not measured" in text and "met |" not in text
