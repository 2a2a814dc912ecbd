"""Drop mode (learning-to-drop / random-drop baselines): schedule format, reference, compiler."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes.liveness import plan_cache
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import CallSchedule, Schedule, heuristic, import_router
from l2c_compile.schedule.router_files import save_router
from tests.families import CASES, case_model, case_plan, params
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit, tiny_uvit

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ddim(nfe: int):
    return make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")


def _dpm(nfe: int, shifted: bool = True):
    return make_plan(
        "dpm-solver-2",
        nfe,
        noise_schedule="scaled_linear",
        time_input="continuous",
        shifted=shifted,
    )


def _drop(sched: Schedule) -> Schedule:
    return dataclasses.replace(sched, mode="drop")


# ── schedule format ───────────────────────────────────────────────────────────────────────────


def test_mode_round_trips_and_absent_means_cache():
    plan = _ddim(4)
    sched = _drop(random_schedule(plan, 2, random.Random(0), p=0.7))
    back = Schedule.from_json(sched.to_json())
    assert back == sched and back.mode == "drop"
    d = random_schedule(plan, 2, random.Random(0), p=0.7).to_dict()
    d.pop("mode")  # a document written before drop mode existed
    assert Schedule.from_dict(d).mode == "cache"


def test_unknown_mode_is_a_one_line_error():
    d = Schedule.all_compute("test", 2, _ddim(4)).to_dict()
    with pytest.raises(L2CError, match=r"mode must be 'cache' or 'drop'.*did you mean 'drop'"):
        Schedule.from_dict({**d, "mode": "dorp"})


def test_drop_needs_no_earlier_writer():
    # A first call that skips a sublayer: reusing it is an error (nothing cached yet), dropping
    # it is not, and the cache plan of a drop schedule reads and keeps nothing.
    first = CallSchedule(0, 999.0, "cache", 0, reuse={"attn": (0,), "mlp": ()})
    fields = dict(model="test", depth=1, sampler="ddim", nfe=1, threshold=None, source={})
    with pytest.raises(L2CError, match="reuses attn of block 0 before any earlier call"):
        Schedule(**fields, calls=(first,))
    assert Schedule(**fields, calls=(first,), mode="drop").stats()["skipped_total"] == 1
    e = frozenset()
    with pytest.raises(L2CError, match="no earlier call computed"):
        plan_cache([(frozenset({0}), e)], depth=1)
    cp = plan_cache([(frozenset({0}), e)], depth=1, mode="drop")
    assert cp.calls[0].reads == () and cp.exports == ((),) and cp.peak_live_entries == 0


def test_heuristic_and_router_import_carry_the_mode(tmp_path):
    plan = _ddim(6)
    rnd = heuristic("random", plan, model="test", depth=3, fraction=0.5, seed=1, mode="drop")
    assert rnd.mode == "drop" and rnd.stats()["skipped_total"] == round(0.5 * 3 * 6)
    assert heuristic("top", plan, model="test", depth=3, fraction=0.5).mode == "cache"
    logits = torch.randn(6, 6, generator=torch.Generator().manual_seed(0)) * 4
    for mode in ("cache", "drop"):
        path = tmp_path / f"{mode}.safetensors"
        save_router(path, logits, {"model": "test", "sampler": "ddim", "nfe": 6, "mode": mode})
        sched = import_router(path, plan, model="test", depth=3, threshold=0.5)
        assert sched.mode == mode
    bad = tmp_path / "bad.safetensors"
    save_router(bad, logits, {"model": "test", "sampler": "ddim", "nfe": 6, "mode": "skip"})
    with pytest.raises(L2CError, match="unknown mode 'skip'"):
        import_router(bad, plan, model="test", depth=3, threshold=0.5)


# ── reference executor ────────────────────────────────────────────────────────────────────────


def test_reference_drop_equals_a_model_without_those_branches():
    # Dropping every sublayer at a cache call = that call runs with zeroed branch outputs, which
    # for DiT equals zeroing the attention/MLP output projections (their output is f(h)).
    model = tiny_dit(3, depth=2)
    plan = _ddim(2)  # call 0 full, call 1 cache
    sched = _drop(random_schedule(plan, 2, random.Random(0), p=1.0))
    noise, labels = inputs(model)
    got = reference.sample(model, plan, sched, noise, labels, None)

    eps_calls = []

    def zeroed_eps(call, x_in):
        from l2c_compile.compiler.guidance import GuidedDenoiser, timestep_vector

        stripped = tiny_dit(3, depth=2).requires_grad_(False)
        if call.role == "cache":
            for b in stripped.transformer_blocks():
                for lin in (b.attn.proj, b.mlp.fc2):
                    torch.nn.init.zeros_(lin.weight)
                    torch.nn.init.zeros_(lin.bias)
        eps_calls.append(call.role)
        t = timestep_vector(call.timestep, x_in.shape[0], x_in.device)
        return GuidedDenoiser(stripped, cfg=False)(x_in, t, labels, torch.tensor(1.0))

    from l2c_compile.samplers import execute_plan

    want = execute_plan(plan, noise, zeroed_eps)
    assert eps_calls == ["full", "cache"]
    assert rel_error(got, want) <= 1e-6


def test_reference_drop_differs_from_cache_and_computes_nothing_dropped():
    model = tiny_dit(4, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(2), p=1.0)
    noise, labels = inputs(model)
    cached = reference.sample(model, plan, sched, noise, labels, 4.0)
    dropped = reference.sample(model, plan, _drop(sched), noise, labels, 4.0)
    assert rel_error(dropped, cached) > 1e-4  # zeros, not the cached outputs (fp32 noise ~1e-7)
    with reference.instrument(model) as state:
        state.mode = "drop"
        state.set_call({"attn": (0, 1), "mlp": (1,)})
        model(noise, torch.full((2,), 500.0), labels)
        assert (state.computed, state.reused) == (1, 3)
        assert state.cache.keys() == {("mlp", 0)}  # dropped sublayers write nothing either


# ── compiler ──────────────────────────────────────────────────────────────────────────────────


@SETTINGS
@given(
    depth=st.integers(1, 3),
    cfg=st.booleans(),
    nfe=st.integers(2, 6),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_dit_drop_compiled_matches_reference(depth, cfg, nfe, p, seed):
    model = tiny_dit(seed, depth=depth)
    plan = _ddim(nfe)
    sched = _drop(random_schedule(plan, depth, random.Random(seed), p))
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg)
    noise, labels = inputs(model, 2, seed)
    scale = 3.0 if cfg else None
    got = compiled(noise, labels, scale)
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(got, want) <= 1e-5


@SETTINGS
@given(
    depth=st.sampled_from([2, 4]),
    cfg=st.booleans(),
    k=st.integers(1, 3),
    shifted=st.booleans(),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_uvit_drop_compiled_matches_reference(depth, cfg, k, shifted, p, seed):
    model = tiny_uvit(seed, depth=depth)
    plan = _dpm(2 * k, shifted)
    nblocks = len(model.transformer_blocks())
    sched = _drop(random_schedule(plan, nblocks, random.Random(seed), p))
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg)
    noise, labels = inputs(model, 3, seed)
    scale = 0.4 if cfg else None
    got = compiled(noise, labels, scale)
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(got, want) <= 1e-5


@pytest.mark.parametrize("family", params(slow_exported="two export captures, tens of seconds each on CPU; "
                                               "the contract suite compiles them by default"))
def test_drop_graphs_read_no_cache_and_lose_the_branch(family):
    model = case_model(family, 6, depth=3)
    plan = case_plan(family, 6)
    layout = family_of(model).layout(model)
    sched = random_schedule(plan, layout.depth, random.Random(1), p=0.6, layout=layout)
    # without hoisting, each step graph computes (and prunes) its own adaLN projections
    cache = l2c_compile.compile(model, plan, sched, hoist=False)
    drop = l2c_compile.compile(model, plan, _drop(sched), hoist=False)
    assert "cache_" in cache.source
    assert "cache_" not in drop.source
    assert drop.info["peak_live_cache_entries"] == 0
    assert drop.info["schedule"]["mode"] == "drop"
    # The same sublayers are gone in both modes; a dropped gated sublayer also loses its adaLN
    # gate (the only modulation chunk a reused one keeps), so its projection may prune further.
    gated, outputs = CASES[family].gated, family_of(model).outputs(model)
    fewer = 0
    for gc, gd in zip(cache.info["graphs"], drop.info["graphs"], strict=True):
        assert gd["linear_calls"] <= gc["linear_calls"]
        if not any(gc[f"reuse_{k}"] for k in gated):
            assert gd["linear_calls"] == gc["linear_calls"]
        fewer += gc["linear_calls"] - gd["linear_calls"]
        assert gd["exports"] == 0
        specialize = next(p for p in gd["passes"] if p["name"] == "specialize")
        # one dropped branch per cached output (a joint attention has several)
        assert specialize["stats"]["dropped"] == sum(len(outputs[(k, b)]) for k in layout.kinds for b in gd[f"reuse_{k}"])
    # Where the gates are chunks of a per-block projection (DiT's adaLN), which prune_chunks
    # already trims for reused sublayers, dropping trims it further; otherwise (no gates, or
    # PixArt's gates from a shared table) the linears are the same.
    pruned = sum(p["stats"].get("projections_pruned", 0) for g in cache.info["graphs"] for p in g["passes"]
                 if p["name"] == "prune_chunks")
    assert (fewer > 0) == (pruned > 0), (fewer, pruned)
    macs_drop, macs_cache = drop.info["macs_per_image"], cache.info["macs_per_image"]
    assert macs_drop["uncached"] == macs_cache["uncached"]
    assert macs_drop["compiled"] <= macs_cache["compiled"] < macs_cache["uncached"]


def test_drop_manifest_round_trips_through_load(tmp_path):
    from l2c_compile.models.registry import build_model, get_spec, init_random

    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 0)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = _drop(random_schedule(plan, 3, random.Random(4), p=0.8, model="DiT-Tiny"))
    compiled = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict())
    out = compiled.save(tmp_path / "art")
    manifest = json.loads((out / "manifest.json").read_text())
    assert Schedule.from_dict(manifest["schedule"]) == sched
    loaded = l2c_compile.load(out)
    noise, labels = inputs(model)
    assert rel_error(loaded(noise, labels, 4.0), compiled(noise, labels, 4.0)) <= 1e-6
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(loaded(noise, labels, 4.0), want) <= 1e-5
