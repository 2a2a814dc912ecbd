"""benchmarks/train_fmnist_routers.py on a small stand-in: files, metadata, schedule, summary."""

from __future__ import annotations

import importlib.util
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


@pytest.mark.parametrize("mode", ["cache", "drop"])
def test_train_job_writes_router_and_schedule(script, tmp_path, monkeypatch, mode):
    install_model(tmp_path, monkeypatch, "DiT-FMNIST", NAME)
    job = script.Job(
        NAME, "ddim", 4, 3e-4, mode=mode, tag="drop" if mode == "drop" else "", steps=3
    )
    out = tmp_path / "routers"
    row = script.train_job(job, _data(), batch=4, shards=2, lr=1e-2, seed=0, out_dir=out)
    router = load_router(out / f"{job.name}.safetensors")
    assert router.meta["lam"] == 3e-4 and router.meta["mode"] == mode and router.meta["steps"] == 3
    assert router.meta["data"] == "random images"
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
