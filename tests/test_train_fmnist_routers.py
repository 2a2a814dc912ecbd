"""benchmarks/train_fmnist_routers.py on a small stand-in: files, metadata, schedule, summary."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.router.data import TensorData
from l2c_compile.schedule import Schedule
from l2c_compile.schedule.router_files import load_router
from tests.fmnist_stand_ins import install_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "train_fmnist_routers.py"
NAME = "DiT-FMNIST-stand-in"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_fmnist_routers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_fmnist_routers"] = module
    spec.loader.exec_module(module)
    return module


def _data() -> TensorData:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 32, 32, generator=g) * 2 - 1  # (16, 1, 32, 32)
    return TensorData(x, torch.arange(16) % 10, "random images")


@pytest.mark.parametrize(
    ("mode", "objective", "ramp"),
    [("cache", "step", "constant"), ("drop", "step", "constant"), ("cache", "trajectory", "rising")],
)
def test_train_job_writes_router_and_schedule(script, tmp_path, monkeypatch, mode, objective, ramp):
    install_model(tmp_path, monkeypatch, "DiT-FMNIST", NAME)
    job = script.Job(
        NAME, "ddim", 4, 3e-4, mode=mode, tag="drop" if mode == "drop" else "", steps=3,
        objective=objective, lam_schedule=ramp,
    )
    out = tmp_path / "routers"
    row = script.train_job(job, _data(), batch=4, shards=2, lr=1e-2, seed=0, out_dir=out, steps=2)
    router = load_router(out / f"{job.name}.safetensors")
    assert router.meta["lam"] == 3e-4 and router.meta["mode"] == mode and router.meta["steps"] == 2
    assert row["steps"] == 2 and row["config"]["steps"] == 2  # --steps overrides the job's 3
    assert row["process_peak_rss_mb"] > 0
    assert router.meta["data"] == "random images" and router.meta["objective"] == objective
    assert router.meta["lam_schedule"] == ramp and row["lam_schedule"] == ramp
    # The trajectory objective samples as the evaluation does: with the model's CFG scale.
    from l2c_compile.models.registry import get_spec

    cfg = get_spec(NAME).default_cfg_scale if objective == "trajectory" else None
    assert router.meta["cfg_scale"] == cfg
    sched = Schedule.load(out / f"{job.name}.json")
    assert sched.mode == mode and sched.nfe == 4 and sched.threshold == 0.1  # DiT's θ
    assert not list(out.glob("*.ckpt"))  # resumable training state is not shipped
    assert (
        row["config"]["shards"] == 2
        and row["schedule"]["skipped_total"] == sched.stats()["skipped_total"]
    )
    assert 0.0 <= row["final_skip"] <= 1.0 and row["seconds"] > 0


def test_jobs_cover_the_issue_and_names_follow_shipped_router(script):
    names = {j.name for j in script.JOBS}
    for nfe in (10, 20, 50):
        assert f"DiT-FMNIST-ddim-{nfe}" in names
    assert {f"U-ViT-FMNIST-dpm-solver-2-{n}" for n in (10, 20)} <= names
    assert "DiT-FMNIST-ddim-20-drop" in names
    assert sum(1 for j in script.JOBS if j.nfe == 20 and j.tag.startswith("lam")) >= 2
    with pytest.raises(L2CError, match="unknown router"):
        script._select(["DiT-FMNIST-ddim-30"])


def test_train_long_resumes_segments_and_keeps_the_shipped_length(script, tmp_path, monkeypatch):
    """--long: curve lines per segment, a snapshot at job.steps equal to a plain run of that
    length, and a second call continuing from the checkpoint rather than from step 0."""
    install_model(tmp_path, monkeypatch, "DiT-FMNIST", NAME)
    job = script.Job(NAME, "ddim", 4, 3e-4, steps=3)
    out, curve = tmp_path / "long", tmp_path / "curve.jsonl"
    kw = dict(segment=2, minutes=60, out_dir=out, curve=curve, batch=4, shards=2, lr=1e-2, seed=0)
    script.train_long([job], _data(), samples=16, **kw)  # 4 steps: segments end at 2, 3, 4
    rows = [json.loads(x) for x in curve.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4] and [r["samples"] for r in rows] == [8, 12, 16]
    assert rows[-1]["epochs"] == 1.0 and rows[-1]["wall_s"] > rows[0]["wall_s"] > 0
    assert all(r["peak_rss_mb"] > 0 and 0 <= r["skip"] <= 1 for r in rows)
    plain = script.train_job(job, _data(), batch=4, shards=2, lr=1e-2, seed=0, out_dir=tmp_path)
    snap = load_router(out / f"{job.name}-s12.safetensors").logits
    assert torch.allclose(snap, load_router(tmp_path / f"{job.name}.safetensors").logits)
    assert plain["final_skip"] == rows[1]["skip"]
    script.train_long([job], _data(), samples=24, **kw)  # continues: 6 steps, ends at 6
    rows = [json.loads(x) for x in curve.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4, 6] and rows[-1]["wall_s"] > rows[2]["wall_s"]
    assert load_router(out / f"{job.name}.safetensors").meta["steps"] == 6
    md = script.curve_markdown(rows)
    assert (
        md.count("\n| ") == 1 + len(rows) and f"| 24 | 1.500 | {rows[-1]['distance']:.3g} |" in md
    )


def test_schedule_diff_names_the_disagreeing_sublayers(script):
    from l2c_compile.samplers import make_plan

    plan = make_plan("ddim", 4)
    logits = torch.ones(4, 6)
    a = Schedule.from_router(logits, plan, model="m", depth=3, threshold=0.5)
    logits[0, 3] = -1.0  # row 0 is the last cache call's; entry 3 is block 1's MLP
    b = Schedule.from_router(logits, plan, model="m", depth=3, threshold=0.5)
    assert script.schedule_diff(a, a) == []
    assert script.schedule_diff(a, b) == ["call 3 (row 0): mlp 1 reused by b"]


def test_router_cost_times_steps_of_a_random_model(script):
    (row,) = script.router_cost("DiT-Tiny", [2], 1, nfe=4)
    assert (
        row["batch"] == 2 and row["s_per_step"] > 0 and row["s_per_sample"] == row["s_per_step"] / 2
    )
    assert row["peak_rss_mb"] >= row["rss_after_model_mb"] >= row["rss_before_model_mb"] > 0
