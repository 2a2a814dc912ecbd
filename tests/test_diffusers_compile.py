"""diffusers' DiTTransformer2DModel, unmodified, through the export front end and every pass."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.samplers import make_plan
from tests.helpers import inputs, random_schedule, rel_error

pytest.importorskip("diffusers")
from l2c_compile.compiler.passes.sublayers import find_sublayers, sublayer_paths
from l2c_compile.compiler.passes.trace import fx_step, trace_step
from l2c_compile.diffusers import DiffusersDiT
from tests.diffusers_helpers import tiny_transformer

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _model(seed: int = 0, **kw) -> DiffusersDiT:
    return DiffusersDiT(tiny_transformer(seed, **kw))


def test_fx_cannot_trace_it_and_export_captures_it_whole():
    model = _model()
    with pytest.raises(l2c_compile.errors.L2CError, match=r"cannot trace DiffusersDiT with torch\.fx"):
        fx_step(model, cfg=True)
    gm = trace_step(model, cfg=True)
    assert gm.meta["l2c_capture"] == "export"
    assert [n.target for n in gm.graph.nodes if n.op == "placeholder"] == ["x", "t", "y", "cfg_scale"]
    targets = {n.target for n in gm.graph.nodes}
    assert torch.ops.aten._assert_tensor_metadata.default not in targets
    assert torch.ops.aten.dropout.default not in targets
    subs = find_sublayers(gm)
    assert [s.path for s in subs[:2]] == ["transformer.transformer_blocks.0.attn1", "transformer.transformer_blocks.0.ff"]
    assert all(s.gate is not None for s in subs)  # adaLN-Zero gates


def test_sublayers_are_declared_by_module_path():
    model = _model(layers=3)
    paths = sublayer_paths(model)
    assert paths[("attn", 2)] == "transformer.transformer_blocks.2.attn1"
    assert paths[("mlp", 0)] == "transformer.transformer_blocks.0.ff"
    inner = sublayer_paths(model.transformer)
    assert inner[("mlp", 1)] == "transformer_blocks.1.ff"


def test_the_model_is_used_unmodified():
    model = _model()
    before = {k: v.clone() for k, v in model.transformer.state_dict().items()}
    blocks = list(model.transformer.transformer_blocks)
    plan = make_plan("ddim", 4)
    sched = random_schedule(plan, 2, random.Random(0), p=1.0)
    noise, labels = inputs(model, 2)
    reference.sample(model, plan, sched, noise, labels, 4.0)
    l2c_compile.compile(model, plan, sched)(noise, labels, 4.0)
    assert type(blocks[0].attn1).__name__ == "Attention" and list(model.transformer.transformer_blocks) == blocks
    assert all(torch.equal(before[k], v) for k, v in model.transformer.state_dict().items())


def test_all_compute_equals_the_uncached_model_for_any_batch():
    model = _model(1)
    compiled = l2c_compile.compile(model, make_plan("ddim", 5), None, hoist=False)
    hoisted = l2c_compile.compile(model, make_plan("ddim", 5), None)
    for batch in (1, 3):  # the export capture keeps the batch size symbolic
        noise, labels = inputs(model, batch, batch)
        want = reference.sample_uncached(model, make_plan("ddim", 5), noise, labels, 4.0)
        assert torch.equal(compiled(noise, labels, 4.0), want)
        # the prologue's GEMMs batch the five steps' rows: the same sums, rounded in another order
        assert rel_error(hoisted(noise, labels, 4.0), want) <= 1e-6


@SETTINGS
@given(layers=st.integers(1, 3), patch=st.sampled_from([1, 2]), learn_sigma=st.booleans(), cfg=st.booleans(),
       nfe=st.integers(2, 6), p=st.floats(0.0, 1.0), fuse=st.booleans(), seed=st.integers(0, 10_000))
def test_compiled_matches_reference(layers, patch, learn_sigma, cfg, nfe, p, fuse, seed):
    model = _model(seed, layers=layers, patch=patch, learn_sigma=learn_sigma)
    plan = make_plan("ddim", nfe)
    sched = random_schedule(plan, layers, random.Random(seed), p)
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg, fuse=fuse)
    noise, labels = inputs(model, 2, seed)
    scale = 3.0 if cfg else None
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(compiled(noise, labels, scale), want) <= 1e-5


def test_dead_work_goes_and_epilogues_fuse_on_the_exported_graph():
    model = _model(2, layers=3)
    plan = make_plan("ddim", 4)
    sched = random_schedule(plan, 3, random.Random(5), p=1.0)
    compiled = l2c_compile.compile(model, plan, sched, hoist=False)  # the steps prune their own adaLN
    full, cached = compiled.info["graphs"][0], compiled.info["graphs"][-1]
    assert cached["linear_calls"] < full["linear_calls"]
    assert cached["macs_per_image"] < full["macs_per_image"]
    stats = {p["name"]: p["stats"] for p in cached["passes"]}
    assert stats["prune_chunks"]["projections_pruned"] == 3  # each block's adaLN keeps its gates only
    assert stats["fuse_reuse"]["rewrites"] > 0
    assert "torch.ops.l2c." in compiled.source
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-5


def test_generated_code_spells_aten_ops_as_people_write_them():
    model = _model()
    plan = make_plan("ddim", 4)
    src = l2c_compile.compile(model, plan, random_schedule(plan, 2, random.Random(0), p=1.0)).source
    assert "torch.ops.aten." not in src
    assert "F.linear(" in src and "F.scaled_dot_product_attention(" in src and ".chunk(6, 1)" in src
    assert "m.transformer.transformer_blocks[1].attn1.to_q.weight" in src


def test_generated_code_takes_its_device_from_the_input():
    src = l2c_compile.compile(_model(), make_plan("ddim", 2), None, hoist=False).source
    assert "torch.device(" not in src and "device=device" in src and "device = x.device" in src
    # hoisted, the timestep embedding runs in the prologue, which has no x: the timesteps' device
    src = l2c_compile.compile(_model(), make_plan("ddim", 2), None).source
    prologue = src[src.index("def prologue("):src.index("def step_0(")]
    assert "torch.device(" not in src and "device = t.device" in prologue and "device=device" in prologue


def test_without_a_declared_capture_fx_is_tried_then_export():
    class Undeclared(DiffusersDiT):
        l2c_capture = None

    assert trace_step(Undeclared(tiny_transformer(0)), cfg=False).meta["l2c_capture"] == "export"

    class Wrong(DiffusersDiT):
        l2c_capture = "jit"

    with pytest.raises(l2c_compile.errors.L2CError, match="l2c_capture is 'jit'; expected fx or export"):
        trace_step(Wrong(tiny_transformer(0)), cfg=False)


def test_exported_step_code_compiles_whole_without_graph_breaks():
    import torch._dynamo

    model = _model(0, layers=1)
    plan = make_plan("ddim", 2)
    sched = random_schedule(plan, 1, random.Random(0), p=1.0)
    torch._dynamo.reset()
    compiled = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    want = compiled(noise, labels, 2.0)
    # fullgraph=True raises on any graph break; the "eager" dynamo backend keeps this test fast.
    compiled.steps = [torch.compile(s, fullgraph=True, backend="eager") for s in compiled.steps]
    assert rel_error(compiled(noise, labels, 2.0), want) <= 1e-6


def test_generated_code_reads_like_the_diffusers_forward():
    from tests.test_codegen import assert_reads_like_a_forward, reusing

    model = _model(layers=3)
    plan = make_plan("ddim", 6, noise_schedule="linear", time_input="discrete")
    sched = reusing(plan, 3, {0})
    compiled = l2c_compile.compile(model, plan, sched)
    src = compiled.source
    assert_reads_like_a_forward(src)
    assert "b1_shift_msa, b1_scale_msa, b1_gate_msa, b1_shift_mlp, b1_scale_mlp, b1_gate_mlp = " in src
    assert "b1_query = F.linear(" in src and "b1_attn = F.linear(" in src
    cache = src[src.index("def step_1("):src.index("STEPS = ")]
    assert "transformer_blocks[0].attn1" not in cache and "transformer_blocks[0].ff" not in cache
    assert "    # + cached attn output of block 0, + cached mlp output of block 0\n" in cache
    noise, labels = inputs(model, 2)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-5
