"""Every schedule and router file that exists reads, and writes back, exactly as before kinds
became keys: the shipped Fashion-MNIST schedules and routers, and the released official routers
in ``shared/data/routers`` beside the checkout (skipped where absent)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import l2c_compile
from l2c_compile.families import get_family
from l2c_compile.models.registry import get_spec, num_blocks
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule, import_router
from l2c_compile.schedule.router_files import (
    export_official,
    load_router,
    router_facts,
    save_router,
)

ASSETS = Path(l2c_compile.__file__).resolve().parent / "assets" / "routers"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routers"
OFFICIAL = sorted(SHARED.glob("*.pt*")) if SHARED.is_dir() else []


def _plan(spec, sampler: str, nfe: int, options: dict):
    shifted = {k: v for k, v in options.items() if k == "shifted"}
    return make_plan(sampler, nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input, **shifted)


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_schedule_reads_and_writes_back_byte_for_byte(path, tmp_path):
    schedule = Schedule.load(path)
    assert schedule.to_json() == path.read_text(encoding="utf-8")
    schedule.save(tmp_path / path.name)
    assert (tmp_path / path.name).read_bytes() == path.read_bytes()
    assert Schedule.load(tmp_path / path.name) == schedule


@pytest.mark.parametrize("path", sorted(ASSETS.glob("*.safetensors")), ids=lambda p: p.name)
def test_every_shipped_router_gives_its_shipped_schedule_and_writes_back(path, tmp_path):
    router = load_router(path)
    shipped = Schedule.load(path.with_suffix(".json"))
    spec = get_spec(router.meta["model"])
    plan = _plan(spec, shipped.sampler, shipped.nfe, router.meta.get("options") or {})
    schedule = import_router(path, plan, model=spec.name, depth=num_blocks(spec), threshold=shipped.threshold)
    # the source now lists the facts checked; everything else is the shipped document, byte for byte
    assert dataclasses.replace(schedule, source=shipped.source).to_json() == path.with_suffix(".json").read_text()
    meta = {k: v for k, v in router.meta.items() if k not in ("format", "version")}
    save_router(tmp_path / path.name, router.logits, meta)
    again = load_router(tmp_path / path.name)
    assert again.logits.equal(router.logits) and again.kinds == router.kinds
    assert {k: again.meta[k] for k in router.meta} == router.meta
    save_router(tmp_path / "again.safetensors", again.logits,
                {k: v for k, v in again.meta.items() if k not in ("format", "version")})
    third = load_router(tmp_path / "again.safetensors")
    assert third.meta == again.meta and third.logits.equal(router.logits)


@pytest.mark.skipif(not OFFICIAL, reason="needs shared/data/routers beside the checkout")
@pytest.mark.parametrize("path", OFFICIAL, ids=lambda p: p.name)
def test_every_released_router_reads_and_exports_unchanged(path, tmp_path):
    router = load_router(path)
    family = get_family(router.meta["family"])
    spec = get_spec("DiT-XL/2" if family.name == "dit" else "U-ViT-H/2")
    plan = _plan(spec, spec.default_sampler, router.rows, {})
    schedule = import_router(path, plan, model=spec.name, depth=num_blocks(spec), threshold=family.threshold)
    assert Schedule.from_json(schedule.to_json()).to_json() == schedule.to_json()
    export_official(tmp_path / path.name, router.logits, family.name)
    back = load_router(tmp_path / path.name)
    assert back.logits.equal(router.logits) and back.meta["format"] == router.meta["format"]
    assert {k: v for k, v in router_facts(back).items()} == {
        k: v for k, v in router_facts(router).items() if k in ("nfe", "depth", "sublayers", "family")}
    again = import_router(tmp_path / path.name, plan, model=spec.name, depth=num_blocks(spec),
                          threshold=family.threshold)
    assert [c.to_dict() for c in again.calls] == [c.to_dict() for c in schedule.calls]
