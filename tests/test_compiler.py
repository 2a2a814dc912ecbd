"""The fx compiler: exactness against the reference executor, graph structure, pass reports."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes.base import CompileError, linear_call, node_scope
from l2c_compile.compiler.passes.codegen import ROOT
from l2c_compile.compiler.passes.hoist import classify
from l2c_compile.compiler.passes.liveness import plan_cache
from l2c_compile.compiler.passes.manager import PassManager, check_invariants
from l2c_compile.compiler.passes.sublayers import find_sublayers
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.families import family_of
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule
from tests.families import case_model, case_plan, params
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit, tiny_uvit

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan(family: str, nfe: int):
    if family == "dit":
        return make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")
    return make_plan("dpm-solver-2", nfe, noise_schedule="scaled_linear", time_input="continuous")


@SETTINGS
@given(
    depth=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    patch=st.sampled_from([1, 2]),
    learn_sigma=st.booleans(),
    cfg=st.booleans(),
    nfe=st.integers(2, 6),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_dit_compiled_matches_reference(depth, heads, patch, learn_sigma, cfg, nfe, p, seed):
    model = tiny_dit(seed, depth=depth, num_heads=heads, patch_size=patch, learn_sigma=learn_sigma)
    plan = _plan("dit", nfe)
    sched = random_schedule(plan, depth, random.Random(seed), p)
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg)
    noise, labels = inputs(model, 2, seed)
    scale = 3.0 if cfg else None
    got = compiled(noise, labels, scale)
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(got, want) <= 1e-5


@SETTINGS
@given(
    depth=st.sampled_from([2, 4]),
    heads=st.sampled_from([1, 2]),
    cfg=st.booleans(),
    k=st.integers(1, 3),
    shifted=st.booleans(),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_uvit_compiled_matches_reference(depth, heads, cfg, k, shifted, p, seed):
    model = tiny_uvit(seed, depth=depth, num_heads=heads)
    plan = make_plan(
        "dpm-solver-2",
        2 * k,
        noise_schedule="scaled_linear",
        time_input="continuous",
        shifted=shifted,
    )
    nblocks = len(model.transformer_blocks())
    sched = random_schedule(plan, nblocks, random.Random(seed), p)
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg)
    noise, labels = inputs(model, 3, seed)
    scale = 0.4 if cfg else None
    got = compiled(noise, labels, scale)
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(got, want) <= 1e-5


# The all-compute schedule equals the uncached model for every family: tests/test_family_contract.py.


def test_caching_changes_the_output_and_reuses_real_tensors():
    model = tiny_dit(2, depth=3)
    plan = _plan("dit", 4)
    sched = random_schedule(plan, 3, random.Random(0), p=1.0)
    compiled = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    cached = compiled(noise, labels, 4.0)
    uncached = reference.sample_uncached(model, plan, noise, labels, 4.0)
    assert rel_error(cached, uncached) > 1e-3  # the cache really engaged


def _linears(gm) -> list:
    """The Linear evaluations of a traced step (a Linear module, or ``F.linear``/``aten.linear``)."""
    return [n for n in gm.graph.nodes if linear_call(gm, n) is not None]


@pytest.mark.parametrize("hoist", [False, True])
@pytest.mark.parametrize("family", params(slow_exported="half a minute per export-captured compile on CPU; the "
                                               "contract suite compiles them by default"))
def test_linear_calls_per_graph_match_the_schedule(family, hoist):
    model = case_model(family, 3, depth=3)
    plan = case_plan(family, 6)
    fam = family_of(model)
    layout = fam.layout(model)
    sched = random_schedule(plan, layout.depth, random.Random(5), p=0.5, layout=layout)
    gm = trace_step(model, cfg=True)
    linears = _linears(gm)
    fixed = {n for n, k in classify(gm).items() if k != "latent"}  # the hoist pass moves these to the prologue
    # each sublayer's own Linears (qkv + proj, fc1 + fc2…) the steps run: a reused one runs none
    own: dict = {}
    for key, path in fam.paths(model).items():
        own[key] = [n for n in linears if (s := node_scope(n, ROOT)) is not None
                    and (s == path or s.startswith(path + "."))
                    and not (hoist and n in fixed)]
    compiled = l2c_compile.compile(model, plan, sched, hoist=hoist)
    hoisted = compiled.info["hoisted"]["gemms"] if hoist else 0
    if hoist:  # DiT: t_embedder's two, each block's adaLN and the final layer's
        assert hoisted == sum(1 for n in linears if n in fixed)
    for g in compiled.info["graphs"]:
        reused = [(k, b) for k in layout.kinds for b in g[f"reuse_{k}"]]
        expected = len(linears) - hoisted - sum(len(own[key]) for key in reused)
        prune = next(p for p in g["passes"] if p["name"] == "prune_chunks")["stats"]
        # a chunked projection whose used chunks are not contiguous splits into one Linear per run
        # (``test_dit_adaln_prunes_to_one_linear_per_run_of_used_chunks`` counts DiT's exactly)
        if prune.get("projections_pruned", 0):
            assert g["linear_calls"] >= expected, g
        else:
            assert g["linear_calls"] == expected, g


def test_dit_adaln_prunes_to_one_linear_per_run_of_used_chunks():
    """DiT's adaLN projection (shift, scale, gate × attention, MLP) is pruned to its used rows:
    a reused sublayer keeps only its gate; each contiguous run of used chunks is one Linear."""
    model = tiny_dit(3, depth=3)
    plan = _plan("dit", 6)
    sched = random_schedule(plan, 3, random.Random(5), p=0.5)
    base = len(_linears(trace_step(model, cfg=True)))
    compiled = l2c_compile.compile(model, plan, sched, hoist=False)
    for g in compiled.info["graphs"]:
        attn, mlp = set(g["reuse_attn"]), set(g["reuse_mlp"])
        expected = base - 2 * (len(attn) + len(mlp))  # qkv+proj, fc1+fc2 per reused sublayer
        for b in range(3):
            # adaLN chunks [shift, scale, gate] × (attn, mlp); contiguous used runs become linears
            used = [i for i in range(6) if not ((i < 2 and b in attn) or (3 <= i < 5 and b in mlp))]
            runs = sum(1 for j, i in enumerate(used) if j == 0 or used[j - 1] != i - 1)
            expected += runs - 1
        assert g["linear_calls"] == expected, g


def test_distinct_graphs_follow_distinct_masks():
    model = tiny_dit(4, depth=2)
    plan = _plan("dit", 8)
    sched = random_schedule(plan, 2, random.Random(11), p=0.5)
    compiled = l2c_compile.compile(model, plan, sched)
    masks = {(frozenset(c.reused("attn")), frozenset(c.reused("mlp"))) for c in sched.calls}
    assert compiled.info["distinct_graphs"] == len(masks)


def test_macs_drop_with_reuse_and_prune_reports_rows():
    model = tiny_dit(5, depth=2)
    plan = _plan("dit", 4)
    sched = random_schedule(plan, 2, random.Random(0), p=1.0)
    compiled = l2c_compile.compile(model, plan, sched, fuse=False, hoist=False)
    macs = compiled.info["macs_per_image"]
    assert macs["compiled"] < macs["uncached"]
    cache_graph = next(g for g in compiled.info["graphs"] if g["reuse_attn"])
    prune = next(p for p in cache_graph["passes"] if p["name"] == "prune_chunks")
    # both sublayers reused in both blocks: shift+scale of attention and MLP are dead (4 of 6 chunks)
    assert prune["stats"]["rows_removed"] == 2 * 4 * 32


def test_sublayers_found_by_module_scope():
    model = tiny_dit(0, depth=3)
    gm = trace_step(model, cfg=True)
    subs = find_sublayers(gm)
    assert [s.key for s in subs] == [(k, i) for i in range(3) for k in ("attn", "mlp")]
    for s in subs:
        assert s.path == f"blocks.{s.key[1]}.{s.key[0]}"
        assert s.value.target == f"model.blocks.{s.key[1]}.{s.key[0]}.{'proj' if s.key[0] == 'attn' else 'fc2'}"
        assert s.gate is not None


def test_a_declared_sublayer_that_is_missing_is_named():
    model = tiny_dit(0, depth=2)
    gm = trace_step(model, cfg=False)
    paths = {("attn", 0): "blocks.0.attn", ("mlp", 0): "blocks.0.feed_forward"}
    with pytest.raises(CompileError, match=r"sublayer blocks\.0\.feed_forward \(mlp of block 0\) is not in"):
        find_sublayers(gm, paths)


def test_liveness_drops_after_last_reader():
    # call 0 full, 1 reuses attn0, 2 full, 3 reuses attn0 and mlp1
    e = frozenset()
    masks = [(e, e), (frozenset({0}), e), (e, e), (frozenset({0}), frozenset({1}))]
    cp = plan_cache(masks, depth=2)
    assert cp.calls[0].keeps == (("attn", 0),)
    assert cp.calls[1].drops_after == (("attn", 0),)
    assert cp.calls[2].keeps == (("attn", 0), ("mlp", 1))
    assert cp.calls[3].reads == (("attn", 0), ("mlp", 1))
    assert cp.peak_live_entries == 2
    assert cp.exports[0] == (("attn", 0), ("mlp", 1))  # union over the full calls sharing graph 0
    with pytest.raises(CompileError, match="no earlier call computed"):
        plan_cache([(frozenset({0}), e)], depth=1)


def test_pass_manager_names_the_pass_that_broke_an_invariant():
    model = tiny_dit(0, depth=1)
    gm = trace_step(model, cfg=False)
    check_invariants(gm)

    def bad_pass(g):
        from l2c_compile.compiler.passes.base import PassResult

        x = next(n for n in g.graph.nodes if n.op == "placeholder")
        with g.graph.inserting_after(x):
            item = g.graph.call_method("item", (x,))
        out = next(n for n in g.graph.nodes if n.op == "output")
        out.args = ((out.args[0], item),)
        g.recompile()
        return PassResult(g, True)

    with pytest.raises(CompileError, match=r"pass sneaky broke an invariant.*host sync"):
        PassManager([("sneaky", bad_pass)]).run(gm)


def test_pass_errors_name_the_pass_the_passes_before_and_the_step_mask():
    from l2c_compile.compiler.passes.dce import dead_code
    from l2c_compile.compiler.passes.manager import Pass
    from l2c_compile.compiler.passes.specialize import SpecializeConfig, specialize
    from l2c_compile.compiler.passes.sublayers import mark_sublayers

    model = tiny_dit(0, depth=2)
    gm = mark_sublayers(trace_step(model, cfg=False)).gm
    config = SpecializeConfig((frozenset({0}), frozenset({1})), exported=(("attn", 1),))
    assert config.describe() == "reuses attention [0], MLP [1]"

    def broken(g):
        raise ValueError("no luck\nsecond line")

    passes = [Pass("specialize", specialize, config), Pass("dce", dead_code), Pass("broken", broken)]
    with pytest.raises(CompileError) as err:
        PassManager(passes, graph=f"step graph 3: {config.describe()}").run(gm)
    assert str(err.value) == ("pass broken failed: no luck (step graph 3: reuses attention [0], MLP [1]; "
                              "after specialize, dce)")
    with pytest.raises(CompileError, match="unknown specialize mode"):
        SpecializeConfig((frozenset(), frozenset()), mode="skip")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "drop"


class _Interleave(torch.nn.Module):
    """Diffusers' rotary idiom: writes into a tensor the graph allocates (``out[..., 0::2] = …``)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = torch.empty_like(torch.cat([a, b], -1))
        out[..., 0::2] = a * 2
        out[..., 1::2] = b - 1
        return out + 1, a + b


def test_dead_code_drops_writes_into_a_local_tensor_only_when_nothing_reads_it():
    from l2c_compile.compiler.passes.dce import dead_code

    def graph(read: bool):
        gm = torch.export.export(_Interleave(), (torch.ones(2, 3), torch.ones(2, 3))).module()
        out = next(n for n in gm.graph.nodes if n.op == "output")
        if not read:  # the interleaved tensor's only reader gone: return a + b twice
            out.args = ((out.args[0][1], out.args[0][1]),)
        return gm

    kept = dead_code(graph(read=True)).gm
    assert sum(n.target is torch.ops.aten.copy_.default for n in kept.graph.nodes) == 2
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert torch.equal(kept(a, b)[0], torch.stack([a * 2, b - 1], -1).flatten(-2) + 1)
    dead = dead_code(graph(read=False))
    targets = {n.target for n in dead.gm.graph.nodes if n.op == "call_function"}
    assert targets == {torch.ops.aten.add.Tensor} and dead.stats["nodes_removed"] >= 8


def test_generated_source_is_readable_python():
    model = tiny_dit(0, depth=2)
    plan = _plan("dit", 4)
    sched = random_schedule(plan, 2, random.Random(1), p=1.0)
    compiled = l2c_compile.compile(model, plan, sched)
    src = compiled.source
    compile(src, "sampler.py", "exec")
    assert "def sample(self, noise, labels, cfg_scale):" in src
    assert src.count("def step_") == compiled.info["distinct_graphs"]
    assert ".item()" not in src and "if " not in src.split("def sample")[1]  # no run-time branching


def test_inductor_backend_compiles_without_graph_breaks():
    pytest.importorskip("torch._dynamo")
    import torch._dynamo

    model = tiny_dit(0, depth=1, hidden_size=16)
    plan = _plan("dit", 2)
    sched = random_schedule(plan, 1, random.Random(0), p=1.0)
    torch._dynamo.reset()
    compiled = l2c_compile.compile(model, plan, sched, backend="eager")
    noise, labels = inputs(model)
    want = compiled(noise, labels, 2.0)
    # fullgraph=True raises on any graph break; the "eager" dynamo backend keeps this test fast.
    compiled.steps = [torch.compile(s, fullgraph=True, backend="eager") for s in compiled.steps]
    got = compiled(noise, labels, 2.0)
    assert rel_error(got, want) <= 1e-6


def test_bad_arguments_are_clear_errors():
    model = tiny_dit(0, depth=2)
    plan = _plan("dit", 4)
    with pytest.raises(l2c_compile.errors.L2CError, match="unknown backend"):
        l2c_compile.compile(model, plan, None, backend="tvm")
    with pytest.raises(l2c_compile.errors.L2CError, match="unknown dtype"):
        l2c_compile.compile(model, plan, None, dtype="int4")
    other = _plan("dit", 6)
    sched = Schedule.all_compute("test", 2, other)
    with pytest.raises(l2c_compile.errors.L2CError, match="NFE"):
        l2c_compile.compile(model, plan, sched)
    compiled = l2c_compile.compile(model, plan, None)
    noise, labels = inputs(model)
    with pytest.raises(l2c_compile.errors.L2CError, match="noise must have shape"):
        compiled(noise[:, :2], labels, 4.0)
    with pytest.raises(l2c_compile.errors.L2CError, match="pass cfg_scale"):
        compiled(noise, labels)


def _fuse_stats(compiled) -> dict:
    total: dict = {}
    for g in compiled.info["graphs"]:
        for rep in g["passes"]:
            if rep["name"] == "fuse_reuse":
                for k, v in rep["stats"].items():
                    total[k] = total.get(k, 0) + v
    return total


def test_fuse_pass_fires_on_dit_graphs_and_stays_exact():
    model = tiny_dit(7, depth=3)
    plan = _plan("dit", 4)
    sched = random_schedule(plan, 3, random.Random(3), p=0.6)
    fused = l2c_compile.compile(model, plan, sched, fuse=True)
    plain = l2c_compile.compile(model, plan, sched, fuse=False)
    stats = _fuse_stats(fused)
    assert stats["reuse_residual_ln_modulate"] + stats["reuse2_residual_ln_modulate"] > 0
    assert "torch.ops.l2c." in fused.source and "torch.ops.l2c." not in plain.source
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(fused(noise, labels, 4.0), want) <= 1e-5
    assert rel_error(plain(noise, labels, 4.0), want) <= 1e-5


def test_fuse_pass_fires_on_uvit_graphs():
    model = tiny_uvit(7, depth=4)
    plan = make_plan("dpm-solver-2", 4, noise_schedule="scaled_linear", time_input="continuous")
    sched = random_schedule(plan, 5, random.Random(0), p=1.0)
    fused = l2c_compile.compile(model, plan, sched)
    assert _fuse_stats(fused)["reuse_residual_layernorm"] > 0
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 0.4)
    assert rel_error(fused(noise, labels, 0.4), want) <= 1e-5


def test_odd_nfe_dpm_solver_compiles_exactly() -> None:
    """DPM-Solver-2 with an odd NFE (closing first-order step, itself a cache step) compiles."""
    model = tiny_uvit()
    plan = make_plan("dpm-solver-2", 5)
    assert [c.role for c in plan.calls] == ["full", "full", "cache", "full", "cache"]
    depth = len(model.transformer_blocks())
    sched = random_schedule(plan, depth, random.Random(5), p=0.8)
    compiled = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 0.4)
    assert rel_error(compiled(noise, labels, 0.4), want) <= 1e-5


def test_liveness_of_a_multi_step_reuse_and_a_trunk_reuse():
    # call 0 computes everything; 1 reuses the trunk; 2 and 3 both reuse attn0 (written at
    # call 0: call 1 ran no block, so attn0 lives across three calls); 4 reuses the trunk of call 3
    e, a0 = frozenset(), frozenset({0})
    trunk = (("trunk", 0),)
    masks = [(e, e), (e, e), (a0, e), (a0, e), (e, e)]
    cp = plan_cache(masks, depth=1, trunk=[False, True, False, False, True], trunk_slots=trunk)
    assert cp.calls[0].keeps == (("attn", 0), ("trunk", 0))
    assert cp.calls[1].reads == trunk and cp.calls[1].drops_after == trunk and cp.calls[1].keeps == ()
    assert cp.calls[2].reads == (("attn", 0),) and cp.calls[2].keeps == ()
    assert cp.calls[3].reads == (("attn", 0),) and cp.calls[3].drops_after == (("attn", 0),)
    assert cp.calls[3].keeps == trunk and cp.calls[4].reads == trunk
    assert cp.peak_live_entries == 2
    assert [cp.reuses_trunk(c.graph) for c in cp.calls] == [False, True, False, False, True]
    assert cp.calls[1].graph != cp.calls[0].graph  # same (empty) mask, but no block runs
    with pytest.raises(CompileError, match="trunk and sublayers at once"):
        plan_cache([(e, e), (a0, e)], depth=1, trunk=[False, True], trunk_slots=trunk)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cache_tensors_live_exactly_as_the_liveness_plan_says(seed):
    """Run a compiled free-form schedule with every step wrapped: the cache tensors alive when
    each call starts are exactly those the plan keeps live, and their peak is the plan's."""
    import weakref

    from tests.helpers import free_form_schedule

    model = case_model("dit", 0)
    plan = case_plan("dit", 10)
    sched = free_form_schedule(plan, len(model.blocks), random.Random(seed), 0.6, 0.3)
    sampler = l2c_compile.compile(model, plan, sched, hoist=False)
    alive: list[weakref.ref] = []
    seen: list[int] = []

    def wrap(step):
        def run(*args, **kwargs):
            seen.append(sum(r() is not None for r in alive))
            out = step(*args, **kwargs)
            alive.extend(weakref.ref(t) for t in out[1:])
            return out
        return run

    sampler.steps = [wrap(s) for s in sampler.steps]
    noise, labels = inputs(model, 2, seed)
    sampler(noise, labels, 4.0)
    live, want = 0, []
    for cc in sampler_plan(sampler).calls:
        want.append(live)
        live += len(cc.keeps) - len(cc.drops_after)
    assert seen == want
    keeps = [len(cc.keeps) for cc in sampler_plan(sampler).calls]
    assert max(w + k for w, k in zip(want, keeps, strict=True)) == sampler.info["peak_live_cache_entries"]
    assert any(len(c.reads) and c.index > 1 for c in sampler_plan(sampler).calls)


def sampler_plan(sampler):
    """The liveness plan a compiled sampler was built from (recomputed from its schedule)."""
    sched = sampler.record.schedule
    trunk = [c.trunk for c in sched.calls] if any(c.trunk for c in sched.calls) else []
    return plan_cache([c.mask for c in sched.calls], sched.depth, trunk=trunk,
                      trunk_slots=(("trunk", 0),) if trunk else ())


def test_shared_weights_compile_the_same_sampler_without_a_second_copy():
    model = tiny_dit(3, depth=3)
    plan = _plan("dit", 4)
    sched = random_schedule(plan, 3, random.Random(1), p=0.5)
    own = l2c_compile.compile(model, plan, sched)
    shared = l2c_compile.compile(model, plan, sched, share_weights=True)
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert {p.data_ptr() for p in shared.model.parameters()} == ptrs  # the model's own tensors
    assert not ptrs & {p.data_ptr() for p in own.model.parameters()}  # the default copies them
    assert shared.model is not model and shared.model.blocks[0] is not model.blocks[0]  # modules copied
    noise, labels = inputs(model)
    assert torch.equal(shared(noise, labels, 4.0), own(noise, labels, 4.0))
    assert l2c_compile.compile(model, plan, None, share_weights=True, dtype="float32").source  # no conversion: fine
    with pytest.raises(l2c_compile.errors.L2CError, match="share_weights=True uses the model's own tensors"):
        l2c_compile.compile(model, plan, None, share_weights=True, dtype="bfloat16")
