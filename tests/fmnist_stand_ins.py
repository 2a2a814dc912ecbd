"""Stand-ins for the Fashion-MNIST assets: tiny 1×32×32 models, a random feature network, routers.

They have the shipped models' image format (1×32×32, 10 classes) but random weights, so tests
built on them check plumbing and invariants, not scores.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from l2c_compile.apps import demo
from l2c_compile.fmnist import classifier
from l2c_compile.fmnist.specs import SPEC_FIELDS
from l2c_compile.models import registry
from l2c_compile.schedule.router_files import save_router

SMALL = {
    "dit": {"patch_size": 4, "hidden_size": 32, "depth": 2, "num_heads": 2},
    "uvit": {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


def install_feature_net(tmp_path: Path, monkeypatch: Any) -> None:
    """Point the metrics at a random classifier and statistics of random features."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = classifier.FMNISTClassifier().eval()
    weights, stats = tmp_path / "clf.safetensors", tmp_path / "stats.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    images = torch.rand(300, 1, 32, 32) * 2 - 1  # (300, 1, 32, 32)
    with torch.no_grad():
        feats = net.features(images)  # (300, 128)
    mean, cov = classifier.feature_stats(feats)
    save_file({"mean": mean, "cov": cov, "features": feats.contiguous()}, str(stats))
    use_feature_net(tmp_path, monkeypatch)


def use_feature_net(tmp_path: Path, monkeypatch: Any) -> None:
    """Point the metrics at the stand-in feature net :func:`install_feature_net` wrote."""
    weights, stats = tmp_path / "clf.safetensors", tmp_path / "stats.safetensors"
    monkeypatch.setattr(classifier, "CLASSIFIER_PATH", weights)
    monkeypatch.setattr(classifier, "STATS_PATH", stats)
    # load_classifier / reference_stats are functools.cache'd: forget the real (or absent) assets.
    classifier.load_classifier.cache_clear()
    classifier.reference_stats.cache_clear()


def install_model(tmp_path: Path, monkeypatch: Any, shipped: str, name: str) -> registry.ModelSpec:
    """Register a small random model shaped like ``shipped`` (DiT-FMNIST or U-ViT-FMNIST) as ``name``."""
    spec = _stand_in_spec(tmp_path, shipped, name)
    model = registry.init_random(registry.build_model(spec), 0)
    registry.save_checkpoint(model, spec.checkpoint)
    monkeypatch.setitem(registry.MODELS, name, spec)
    return spec


def use_model(tmp_path: Path, monkeypatch: Any, shipped: str, name: str) -> registry.ModelSpec:
    """Register the stand-in model :func:`install_model` wrote (e.g. in another process)."""
    spec = _stand_in_spec(tmp_path, shipped, name)
    monkeypatch.setitem(registry.MODELS, name, spec)
    return spec


def _stand_in_spec(tmp_path: Path, shipped: str, name: str) -> registry.ModelSpec:
    fields = dict(SPEC_FIELDS[shipped])
    fields.update(name=name, kwargs={**fields["kwargs"], **SMALL[fields["family"]]})
    spec = registry.ModelSpec(**fields)
    return dataclasses.replace(spec, checkpoint=str(tmp_path / f"{name}.safetensors"))


def use_router_dir(tmp_path: Path, monkeypatch: Any) -> Path:
    """Make ``tmp_path/routers`` the shipped-router folder everywhere it is looked up."""
    routers = tmp_path / "routers"
    routers.mkdir(exist_ok=True)
    monkeypatch.setattr(demo, "ROUTERS", routers)
    return routers


def ship_router(
    routers: Path, spec: Any, sampler: str, nfe: int, tag: str = "", seed: int = 1, **meta: Any
) -> Path:
    """A random router file named like a shipped one (``<model>-<sampler>-<nfe>[-<tag>]``)."""
    depth = registry.num_blocks(spec)
    logits = torch.randn(nfe, 2 * depth, generator=torch.Generator().manual_seed(seed)) * 3
    path = routers / (f"{spec.name}-{sampler}-{nfe}" + (f"-{tag}" if tag else "") + ".safetensors")
    save_router(path, logits, {"model": spec.name, "sampler": sampler, "nfe": nfe, **meta})
    return path
