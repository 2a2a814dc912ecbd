"""The demo pipeline end to end (router training fallback included) on a tiny model with a checkpoint."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from l2c_compile.apps.demo import DemoConfig, run_demo
from l2c_compile.errors import L2CError
from l2c_compile.fmnist import classifier
from l2c_compile.fmnist.data import CLASS_NAMES
from l2c_compile.images import comparison_figure
from l2c_compile.models import registry
from tests.fmnist_stand_ins import install_feature_net, install_model, ship_router, use_router_dir

QUALITY_HEADER = "| metric | uncached | cached (L2C) | unit |"


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
    assert list(tmp_path.iterdir()) == []  # a refused demo leaves nothing behind


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"per_class": 0}, "--per-class must be >= 1"),
        ({"repeats": 0}, "--repeats must be >= 1"),
        ({"threshold": 2.0}, r"--threshold \(θ\) must be in \(0, 1\)"),
        ({"router": "missing.pt"}, "router file missing.pt not found"),
    ],
)
def test_demo_refuses_bad_options_before_any_work(tmp_path, option, match):
    with pytest.raises(L2CError, match=match):
        run_demo(DemoConfig(model="DiT-FMNIST", out=tmp_path / "d", **option))
    assert list(tmp_path.iterdir()) == []


def test_demo_output_path_rules(tmp_path, tiny_with_weights):
    """A file or a foreign folder is refused untouched; an earlier demo's folder is replaced."""
    afile = tmp_path / "afile"
    afile.write_text("hi")
    with pytest.raises(L2CError, match="exists and is not a folder"):
        run_demo(DemoConfig(model=tiny_with_weights.name, out=afile))
    assert afile.read_text() == "hi"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(L2CError, match="an earlier demo did not write"):
        run_demo(DemoConfig(model=tiny_with_weights.name, out=foreign))
    assert [f.name for f in foreign.iterdir()] == ["keep.txt"]

    out = tmp_path / "demo"
    cfg = DemoConfig(model=tiny_with_weights.name, nfe=4, train_steps=2, per_class=1, repeats=1, out=out)
    run_demo(cfg)
    (out / "stale.txt").write_text("from before")
    run_demo(cfg)  # an earlier demo's folder is replaced as a whole
    assert not (out / "stale.txt").exists() and (out / "report.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def _quality_table(markdown: str) -> list[list[str]]:
    """The rows (cells) of report.md's quality table, header first."""
    lines = markdown.splitlines()
    start = lines.index(QUALITY_HEADER)
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return [rows[0], *rows[2:]]  # without the |---| rule


def test_demo_report_and_pictures_on_a_fashion_mnist_model(tmp_path, monkeypatch):
    """Every class gets a labelled row; quality is a table with units, not a dictionary."""
    install_feature_net(tmp_path, monkeypatch)
    spec = install_model(tmp_path, monkeypatch, "DiT-FMNIST", "DiT-FMNIST-stand-in")
    ship_router(use_router_dir(tmp_path, monkeypatch), spec, "ddim", 4)
    out = tmp_path / "demo"
    try:
        report = run_demo(DemoConfig(model=spec.name, nfe=4, per_class=2, repeats=1, out=out))
    finally:
        classifier.load_classifier.cache_clear()
        classifier.reference_stats.cache_clear()
    assert report["router"]["origin"] == "shipped"
    assert report["samples_grid"] == {
        "rows": list(CLASS_NAMES), "panels": ["uncached", "cached (L2C)"], "per_class": 2,
    }  # fmt: skip
    table = _quality_table((out / "report.md").read_text())
    assert table[0] == ["metric", "uncached", "cached (L2C)", "unit"]
    by_name = {row[0]: row[1:] for row in table[1:]}
    psnr = by_name["PSNR vs. the same-noise uncached sample"]
    assert psnr[0] == "–" and psnr[2] == "dB"
    assert float(psnr[1]) == pytest.approx(report["quality"]["psnr_cached_vs_uncached_db"], abs=0.01)
    acc = by_name["class accuracy (Fashion-MNIST classifier)"]
    assert acc[2] == "% of 20 samples"
    assert float(acc[1]) == pytest.approx(100 * report["quality"]["class_accuracy_cached"], abs=0.05)
    macs = by_name["MACs per image"]
    assert macs[2] == "GMAC" and float(macs[1]) < float(macs[0])
    assert "{" not in (out / "report.md").read_text()  # no raw dictionary anywhere
    from PIL import Image

    with Image.open(out / "samples.png") as png, Image.open(out / "schedule.png") as heat:
        assert png.format == heat.format == "PNG"
        assert png.height > 10 * 64  # ten rows of 64-px samples (32 px, doubled)
        assert png.width > 2 * 2 * 64  # two panels of two samples


def test_comparison_figure_labels_every_row_and_both_panels():
    pytest.importorskip("matplotlib")
    names = ["a", "b", "c"]
    x = torch.rand(6, 1, 8, 8) * 2 - 1  # 3 rows × 2 samples
    fig = comparison_figure(x, -x, names, title="t", scale=1)
    left, right = fig.axes
    assert [t.get_text() for t in left.get_yticklabels()] == names
    # Row labels sit at each row's centre: pad 2, 8-px pictures.
    assert list(left.get_yticks()) == [6.0, 16.0, 26.0]
    assert (left.get_title(), right.get_title()) == ("uncached", "cached (L2C)")
    assert right.get_yticks().size == 0 and fig.get_suptitle() == "t"
    with pytest.raises(L2CError, match="same shape"):
        comparison_figure(x, x[:4], names)
    with pytest.raises(L2CError, match="3 rows"):
        comparison_figure(x[:5], x[:5], names)


def test_the_shipped_routers_are_found_where_the_package_keeps_them():
    """The demo and ``eval`` use the router shipped for (model, sampler, NFE) instead of training
    one: every file in ``assets/routers`` is found by its name, and a missing one is ``None``."""
    from l2c_compile.apps.demo import ROUTERS, shipped_router

    files = sorted(ROUTERS.glob("*.safetensors"))
    assert any(f.name == "DiT-FMNIST-ddim-20.safetensors" for f in files), files
    assert shipped_router("DiT-FMNIST", "ddim", 20) == ROUTERS / "DiT-FMNIST-ddim-20.safetensors"
    assert shipped_router("U-ViT-FMNIST", "dpm-solver-2", 20) is not None
    assert shipped_router("DiT-FMNIST", "ddim", 7) is None
