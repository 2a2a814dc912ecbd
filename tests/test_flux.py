"""FLUX.1 (diffusers' ``FluxTransformer2DModel``): the adapter, and the split of the single-stream
blocks' shared projection into cached projected branches (``passes/projections.py``).

The contract suite (``test_family_contract.py``) runs the family like every other; these tests pin
what is FLUX's own: the adapter calls the transformer as ``FluxPipeline`` does, each projected
branch is the right slice of ``proj_out``, a reused branch drops its modules and its slice, and a
declaration that does not match the graph is one error line.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes import projections
from l2c_compile.compiler.passes.base import CompileError
from l2c_compile.compiler.passes.sublayers import find_sublayers
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.diffusers.flux import DiffusersFlux, pack_condition
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.metrics.macs import module_macs
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import CallSchedule, Schedule
from tests.diffusers_helpers import FLUX_TEXT_LEN, flux_prompt_inputs, tiny_flux_transformer
from tests.helpers import rel_error

PLAN = make_plan("flow-euler", 4, noise_schedule="flow", time_input="sigma_1000")


def _model(**kwargs) -> DiffusersFlux:
    return DiffusersFlux(tiny_flux_transformer(0, **kwargs), text_len=FLUX_TEXT_LEN, height=64).eval()


def _inputs(guidance: float | None = 3.5) -> tuple[torch.Tensor, torch.Tensor]:
    p = flux_prompt_inputs(2)
    y = pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"], guidance)
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)), y


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["dev", "schnell"])
def test_the_adapter_calls_the_transformer_as_the_pipeline_does(guidance_embeds: bool) -> None:
    from diffusers import FluxPipeline

    model = _model(guidance_embeds=guidance_embeds)
    x, y = _inputs()
    p = flux_prompt_inputs(2)
    t = torch.tensor([700.0, 250.0])
    packed = FluxPipeline._pack_latents(x, 2, 4, 8, 8)  # (2, 16, 16)
    want = model.transformer(
        hidden_states=packed, timestep=t / 1000, guidance=torch.full((2,), 3.5) if guidance_embeds else None,
        pooled_projections=p["pooled_prompt_embeds"], encoder_hidden_states=p["prompt_embeds"],
        txt_ids=torch.zeros(FLUX_TEXT_LEN, 3), img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
        return_dict=False)[0]
    got = model(x, t, y)
    assert got.shape == x.shape
    assert torch.equal(got, FluxPipeline._unpack_latents(want, 64, 64, 8))


def test_pack_condition_puts_pooled_and_guidance_in_the_last_row() -> None:
    p = flux_prompt_inputs(2)
    y = pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"], torch.tensor([3.5, 1.0]))
    assert y.shape == (2, FLUX_TEXT_LEN + 1, 16)
    assert torch.equal(y[:, :-1], p["prompt_embeds"])
    assert torch.equal(y[:, -1, :12], p["pooled_prompt_embeds"]) and y[:, -1, 12].tolist() == [3.5, 1.0]
    assert not y[:, -1, 13:].any()
    with pytest.raises(L2CError, match="cannot hold"):
        pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"], width=12)


def test_single_blocks_cache_each_projected_branch() -> None:
    """Each single block's branches are the value of a linear on its slice of proj_out (the bias
    with the attention branch), and each has its own gated residual add."""
    model = _model()
    gm = trace_step(model, cfg=False)
    found = {s.key: s for s in find_sublayers(gm)}
    blk = model.transformer.single_transformer_blocks[0]
    dim = blk.proj_out.out_features
    for kind, (lo, hi), bias in (("attn", (0, dim), True), ("mlp", (dim, dim + blk.mlp_hidden_dim), False)):
        s = found[(kind, 2)]
        assert s.path == f"transformer.single_transformer_blocks.0.proj_out_{kind}"
        assert s.value.target is torch.ops.aten.linear.default and s.gate is not None
        weight = s.value.args[1]
        assert weight.target is torch.ops.aten.slice.Tensor and tuple(weight.args[1:]) == (1, lo, hi)
        assert (s.value.args[2] is not None) is bias
    assert found[("attn", 2)].gate is found[("mlp", 2)].gate
    assert found[("mlp", 2)].add.args[0] is found[("attn", 2)].add  # x + g·attn, then + g·mlp


def test_the_split_and_the_reference_keep_the_model_s_numbers() -> None:
    """Compiled (split) and the reference executor (split stand-in) both agree with the pristine
    model to rounding, with nothing reused."""
    model = _model()
    x, y = _inputs()
    layout = family_of(model).layout(model)
    none = Schedule.all_compute("t", layout.depth, PLAN, layout)
    want = reference.sample(model, PLAN, None, x, y)  # the pristine model, no stand-ins
    assert rel_error(reference.sample(model, PLAN, none, x, y), want) <= 1e-6
    assert rel_error(l2c_compile.compile(model, PLAN, None, cfg=False)(x, y, None), want) <= 1e-5


def _reuse_single_mlp(model: DiffusersFlux) -> Schedule:
    layout = family_of(model).layout(model)
    calls = [CallSchedule(c.index, float(c.timestep), c.role, c.router_index,
                          reuse={k: ([2] if k == "mlp" and c.index > 0 else []) for k in layout.kinds})
             for c in PLAN.calls]
    return Schedule(model="t", depth=layout.depth, sampler=PLAN.sampler, nfe=PLAN.nfe, threshold=None,
                    source={"kind": "test"}, calls=tuple(calls), kinds=layout.kinds, groups=layout)


def test_a_reused_mlp_branch_skips_proj_mlp_and_its_slice_of_proj_out() -> None:
    model = _model()
    x, y = _inputs()
    sched = _reuse_single_mlp(model)
    sampler = l2c_compile.compile(model, PLAN, sched, cfg=False)
    assert rel_error(sampler(x, y, None), reference.sample(model, PLAN, sched, x, y)) <= 1e-5
    reuse_step = sampler.source.split("# ── step graph 1")[1]
    block = reuse_step.split("# block 2:")[1].split("# block 3:")[0]
    assert "proj_mlp" not in block and "proj_out.weight[:, 16:80]" not in block and "cache_mlp_2" in block
    assert "attn.to_q" in block  # the attention branch still runs

    count = module_macs(model, x[:1], torch.full((1,), 500.0), y[:1])
    blk = model.transformer.single_transformer_blocks[0]
    tokens = FLUX_TEXT_LEN + 16
    proj_mlp = tokens * 16 * blk.mlp_hidden_dim
    share = tokens * 16 * blk.mlp_hidden_dim  # the mlp columns of proj_out: (T, 64) → (T, 16)
    assert count.per_key[("mlp", 2)] == proj_mlp + share
    assert count.per_key[("attn", 2)] + count.per_key[("mlp", 2)] == sum(
        tokens * m.in_features * m.out_features for m in (blk.attn.to_q, blk.attn.to_k, blk.attn.to_v,
                                                          blk.proj_mlp, blk.proj_out))


def test_a_declaration_that_does_not_match_the_graph_is_one_error_line(monkeypatch) -> None:
    """Branches declared in another order than the cat joins them: refused, naming the block."""
    model = _model()
    family = family_of(model)
    single = family.groups[1]
    swapped = dataclasses.replace(family, groups=(family.groups[0], dataclasses.replace(
        single, kinds=tuple(reversed(single.kinds)))))
    monkeypatch.setattr(projections, "family_of", lambda m: swapped)
    with pytest.raises(CompileError, match=r"single_transformer_blocks\.0\.proj_out: cat input .* does not come from") as exc:
        trace_step(model, cfg=False)
    assert "\n" not in str(exc.value)


def test_the_adapter_rebuilds_from_its_record_and_refuses_a_record_without_one() -> None:
    model = _model()
    again = DiffusersFlux.from_record(model.transformer, {"flux": model.record()})
    assert (again.text_len, again.height, again.input_size) == (FLUX_TEXT_LEN, 64, 8)
    with pytest.raises(L2CError, match="FLUX record lacks its prompt length and image size"):
        DiffusersFlux.from_record(model.transformer, {"sd3": model.record()})
    with pytest.raises(L2CError, match="square images"):
        DiffusersFlux(model.transformer, text_len=FLUX_TEXT_LEN, height=64, width=48)
