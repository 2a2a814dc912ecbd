"""The demo pipeline end to end (router training fallback included) on a tiny model with a checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest

from l2c_compile.demo import DemoConfig, run_demo
from l2c_compile.errors import L2CError
from l2c_compile.models import registry


@pytest.fixture()
def tiny_with_weights(tmp_path, monkeypatch):
    spec = registry.get_spec("DiT-Tiny")
    model = registry.init_random(registry.build_model(spec), 0)
    ckpt = tmp_path / "tiny.safetensors"
    registry.save_checkpoint(model, ckpt)
    shipped = dataclasses.replace(spec, name="DiT-Tiny-shipped", checkpoint=str(ckpt))
    monkeypatch.setitem(registry.MODELS, shipped.name, shipped)
    return shipped


def test_demo_writes_everything_and_verifies(tmp_path, tiny_with_weights):
    out = tmp_path / "demo"
    stages: list[str] = []
    report = run_demo(DemoConfig(model=tiny_with_weights.name, nfe=6, train_steps=4, per_class=1,
                                 repeats=1, out=out), stages.append)
    for name in ("samples.png", "schedule.png", "schedule.json", "report.md", "report.json",
                 "artifact/sampler.py", "router.safetensors"):
        assert (out / name).is_file(), name
    assert report["verify"]["max_rel_error"] <= 1e-5
    assert report["router"]["origin"] == "trained data-free by the demo"
    assert set(report["latency"]) == {"eager uncached", "eager reference L2C", "compiled uncached", "compiled L2C"}
    assert json.loads((out / "report.json").read_text())["nfe"] == 6
    assert any("training" in s for s in stages)


def test_demo_needs_shipped_weights(tmp_path):
    with pytest.raises(L2CError, match="ships no weights"):
        run_demo(DemoConfig(model="DiT-Tiny", out=tmp_path / "d"))
