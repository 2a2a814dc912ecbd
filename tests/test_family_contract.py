"""The contract every model family keeps, written once: a family joins by being declared
(``l2c_compile.families``) and naming a tiny model in ``tests/families.py`` (``CASES``), which
the other tests that hold for every family parametrize over too.

For each declared family: capture, sublayer discovery (one output per cache slot, several for a
joint attention), specialization, compiled == reference under random schedules (hypothesis, the
fused epilogues on), MACs, router files (write, import, export where an official layout exists),
readable generated code, and artifact save/load. ``tests/toy_flux.py`` shows a FLUX-shaped family
(two block groups with different kinds, a two-output joint attention, a parallel single-stream
block) joining with one declaration and a tiny model.
"""

from __future__ import annotations

import random
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.guidance import example_condition
from l2c_compile.compiler.passes.base import CACHE_INPUT_META
from l2c_compile.compiler.passes.dce import dead_code
from l2c_compile.compiler.passes.specialize import SpecializeConfig, specialize
from l2c_compile.compiler.passes.sublayers import (
    cache_slots,
    find_sublayers,
    mark_sublayers,
    sublayer_nodes,
)
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.families import Denoiser, Family, family_of, latent_shape
from l2c_compile.families.vocabulary import Layout, kind_name
from l2c_compile.metrics.macs import module_macs, trajectory_macs
from l2c_compile.schedule import Schedule, import_router
from l2c_compile.schedule.router_files import (
    OFFICIAL_FAMILIES,
    export_official,
    load_router,
    router_layout_meta,
    save_router,
)
from tests.families import CASES, DECLARED, case_model, case_plan
from tests.helpers import free_form_schedule, random_schedule, rel_error

NFE = 4


def test_every_declared_family_joins_the_contract_suite():
    assert set(DECLARED) <= set(CASES), f"families without a Case in tests/families.py: {set(DECLARED) - set(CASES)}"
    assert {"dit", "uvit", "diffusers-dit", "pixart", "sd3", "toy-flux"} <= set(DECLARED)


def _plan(family: Family):
    return case_plan(family.name, NFE)


_MODELS: dict[str, nn.Module] = {}


def _model(name: str) -> nn.Module:
    if name not in _MODELS:
        _MODELS[name] = case_model(name, 0)
    return _MODELS[name]


def _slots(model: nn.Module) -> list:
    fam = family_of(model)
    slots = cache_slots(fam.outputs(model))
    return [s for key in fam.layout(model).sublayer_keys() for s in slots[key]]


@pytest.mark.parametrize("name", DECLARED)
def test_capture_and_discovery_find_one_output_per_cache_slot(name):
    model = _model(name)
    fam = family_of(model)
    assert isinstance(model, Denoiser)  # what the compiler, the reference and router training read
    assert fam.name == name and len(model.transformer_blocks()) == fam.layout(model).depth
    gm = trace_step(model, cfg=True)
    assert gm.meta["l2c_capture"] in ("fx", "export")
    subs = find_sublayers(gm)
    assert [s.key for s in subs] == _slots(model)
    paths = fam.paths(model)
    for s in subs:
        assert s.path in paths.values() and s.add is not s.value


@pytest.mark.parametrize("name", DECLARED)
def test_specialization_removes_every_reused_sublayer(name):
    model = _model(name)
    layout = family_of(model).layout(model)
    gm = trace_step(model, cfg=True)
    mark_sublayers(gm)
    slots = cache_slots(family_of(model).outputs(model))
    mask = tuple(frozenset(layout.blocks(k)) for k in layout.kinds)  # reuse everything
    multi = tuple((k, v) for k, v in slots.items() if len(v) > 1)
    out = dead_code(specialize(gm, SpecializeConfig(mask, (), "cache", layout.kinds, multi)).gm).gm
    assert sublayer_nodes(out) == {}
    reads = [n.meta[CACHE_INPUT_META] for n in out.graph.nodes if n.op == "placeholder" and CACHE_INPUT_META in n.meta]
    assert sorted(reads) == sorted(_slots(model))


@pytest.mark.parametrize("name", DECLARED)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), p=st.floats(0.2, 0.9))
def test_compiled_equals_reference_under_random_schedules(name, seed, p):
    model, case = _model(name), CASES[name]
    fam = family_of(model)
    layout = fam.layout(model)
    plan = _plan(fam)
    sched = random_schedule(plan, layout.depth, random.Random(seed), p, layout=layout)
    noise, y = case.inputs(model, seed)
    want = reference.sample(model, plan, sched, noise, y, case.cfg_scale)
    sampler = l2c_compile.compile(model, plan, sched)  # fused epilogues on, where they apply
    assert rel_error(sampler(noise, y, case.cfg_scale), want) <= 1e-5
    # The cache engaged before the last call (a reuse at the last call of DDIM only moves x0 by
    # sqrt(1 - ᾱ_0) · Δε, which can round away at float32 against samples of size ~100).
    if any(any(c.mask) for c in sched.calls[:-1]):
        assert not torch.equal(want, reference.sample(model, plan, None, noise, y, case.cfg_scale))


@pytest.mark.parametrize("name", DECLARED)
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), p=st.floats(0.2, 0.9), p_trunk=st.floats(0.0, 0.6))
def test_compiled_equals_reference_under_random_free_form_schedules(name, seed, p, p_trunk):
    """Version 2 schedules: reuse at full steps too, several calls back, and whole-trunk reuse."""
    model, case = _model(name), CASES[name]
    fam = family_of(model)
    layout = fam.layout(model)
    plan = case_plan(name, 6)
    sched = free_form_schedule(plan, layout.depth, random.Random(seed), p, p_trunk, layout=layout)
    noise, y = case.inputs(model, seed)
    want = reference.sample(model, plan, sched, noise, y, case.cfg_scale)
    sampler = l2c_compile.compile(model, plan, sched)
    assert rel_error(sampler(noise, y, case.cfg_scale), want) <= 1e-5
    graphs = sampler.info["graphs"]
    assert sum(g.get("reuse_trunk", False) for g in graphs) == (1 if any(c.trunk for c in sched.calls) else 0)
    if any(c.reuses for c in sched.calls[:-1]):
        assert not torch.equal(want, reference.sample(model, plan, None, noise, y, case.cfg_scale))


@pytest.mark.parametrize("name", DECLARED)
def test_a_trunk_step_runs_no_block_and_saves_the_trunk_macs(name):
    model = _model(name)
    layout = family_of(model).layout(model)
    count = module_macs(model, torch.zeros(1, *latent_shape(model)),
                        torch.zeros(1), example_condition(model, 1, False, "cpu"))
    assert sum(count.per_key.values()) <= count.trunk < count.total
    plan = case_plan(name, 3)
    sched = free_form_schedule(plan, layout.depth, random.Random(0), 0.0, 1.0, layout=layout)
    assert [c.trunk for c in sched.calls] == [False, True, True]
    full, cached = trajectory_macs((count, layout.depth), sched)
    assert cached == full - 2 * count.trunk
    compiled = l2c_compile.compile(model, plan, sched, hoist=False)
    trunk_graph = next(g for g in compiled.info["graphs"] if g.get("reuse_trunk"))
    assert trunk_graph["calls"] == [1, 2] and trunk_graph["linear_calls"] < compiled.info["graphs"][0]["linear_calls"]
    step = compiled.source.split(f"def step_{trunk_graph['graph']}(")[1].split("\ndef ")[0]
    # no sublayer runs (a block's other modules may: diffusers' DiT conditions its final layer on
    # transformer_blocks[0].norm1.emb, the timestep and class embedding)
    printed = {re.sub(r"\.(\d+)", r"[\1]", path) for path in family_of(model).paths(model).values()}
    assert "cache_trunk_0" in step and not any(f"{p}(" in step or f"{p}." in step for p in printed), printed


@pytest.mark.parametrize("name", DECLARED)
def test_all_compute_schedule_equals_the_uncached_model(name):
    model, case = _model(name), CASES[name]
    fam = family_of(model)
    layout = fam.layout(model)
    plan = _plan(fam)
    sched = Schedule.all_compute(name, layout.depth, plan, kinds=layout)
    compiled = l2c_compile.compile(model, plan, sched)
    noise, y = case.inputs(model, 1)
    want = reference.sample_uncached(model, plan, noise, y, case.cfg_scale)
    assert rel_error(compiled(noise, y, case.cfg_scale), want) <= 1e-6
    assert compiled.info["distinct_graphs"] == 1


@pytest.mark.parametrize("name", DECLARED)
def test_macs_count_every_sublayer_and_the_schedule_saves_exactly_them(name):
    model = _model(name)
    layout = family_of(model).layout(model)
    count = module_macs(model, torch.zeros(1, *latent_shape(model)),
                        torch.zeros(1), example_condition(model, 1, False, "cpu"))
    assert set(count.per_key) == set(layout.sublayer_keys()) and all(v > 0 for v in count.per_key.values())
    assert sum(count.per_key.values()) < count.total
    plan = _plan(family_of(model))
    sched = random_schedule(plan, layout.depth, random.Random(1), 0.5, layout=layout)
    full, cached = trajectory_macs((count, layout.depth), sched)
    saved = sum(count.per_key[(k, b)] for c in sched.calls for k in c.kinds for b in c.reused(k))
    assert full == NFE * count.total and cached == full - saved and saved > 0
    compiled = l2c_compile.compile(model, plan, sched, hoist=False)
    macs = compiled.info["macs_per_image"]
    assert macs["compiled"] < macs["uncached"]


@pytest.mark.parametrize("name", DECLARED)
def test_router_files_round_trip_in_the_family_layout(name, tmp_path):
    model = _model(name)
    fam = family_of(model)
    layout = fam.layout(model)
    plan = _plan(fam)
    logits = torch.randn(NFE, layout.width, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "router.safetensors"
    save_router(path, logits, {"model": name, "sampler": plan.sampler, "nfe": NFE, **router_layout_meta(layout)})
    router = load_router(path)
    assert router.layout == layout and router.logits.equal(logits)
    sched = import_router(path, plan, model=name, depth=layout.depth, threshold=0.5, kinds=layout)
    direct = Schedule.from_router(logits, plan, model=name, depth=layout.depth, threshold=0.5, kinds=layout)
    assert sched.calls == direct.calls and sched.layout == layout
    assert Schedule.from_json(sched.to_json()).to_json() == sched.to_json()
    if not layout.is_uniform:  # another family's layout is refused
        with pytest.raises(l2c_compile.errors.L2CError, match="this router was not made for this target"):
            import_router(path, plan, model=name, depth=layout.depth, threshold=0.5)  # two kinds everywhere
        every = Layout.uniform(layout.depth, layout.kinds)  # the same kinds in every block
        with pytest.raises(l2c_compile.errors.L2CError, match=r"router covers block groups \[\["):
            import_router(path, plan, model=name, depth=layout.depth, threshold=0.5, kinds=every)
    if fam.router_layout is not None:  # the official layout of the family reads back unchanged
        assert fam.name in OFFICIAL_FAMILIES
        export_official(tmp_path / "official.pt", logits, fam.name, layout.kinds)
        assert load_router(tmp_path / "official.pt").logits.equal(logits)


@pytest.mark.parametrize("name", DECLARED)
def test_generated_code_reads_like_the_model_and_the_artifact_reloads(name, tmp_path):
    model, case = _model(name), CASES[name]
    fam = family_of(model)
    layout = fam.layout(model)
    plan = _plan(fam)
    sched = random_schedule(plan, layout.depth, random.Random(2), 0.6, layout=layout)
    sampler = l2c_compile.compile(model, plan, sched, model_info=case.info(model))
    src = sampler.source
    compile(src, "sampler.py", "exec")
    for g in range(sampler.info["distinct_graphs"]):
        assert f"\ndef step_{g}(self, x, t, y, cfg_scale" in src
    assert "m = self.model" in src and "# block 0: " in src and "b0_" in src
    assert kind_name(layout.kinds[0]) in src
    if any(any(c.mask) for c in sched.calls):  # reused outputs are passed by name
        assert "cache_" in src
    noise, y = case.inputs(model, 0)
    out = sampler(noise, y, case.cfg_scale)
    sampler.save(tmp_path / "art")
    loaded = l2c_compile.load(tmp_path / "art")
    assert loaded.source == src
    assert torch.equal(loaded(noise, y, case.cfg_scale), out)
