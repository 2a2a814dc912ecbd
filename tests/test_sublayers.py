"""Sublayers are found by module scope: rewritten forwards, extra adds and torch.export graphs."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.guidance import example_condition
from l2c_compile.compiler.passes.base import CompileError, is_add
from l2c_compile.compiler.passes.projections import split_projections
from l2c_compile.compiler.passes.sublayers import cache_slots, find_sublayers, sublayer_paths
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.errors import L2CError
from l2c_compile.families import (
    FAMILIES,
    BlockGroup,
    Family,
    KindDecl,
    family_of,
    latent_shape,
    register_family,
)
from l2c_compile.models.dit import DiT, DiTBlock, modulate
from l2c_compile.models.uvit import UViT
from l2c_compile.samplers import make_plan
from tests.families import CASES, DECLARED, case_model
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit, tiny_uvit


class SplitBlock(DiTBlock):
    """The same block, its residuals split over statements and written stream-last."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        chunks = self.adaLN_modulation(c).chunk(6, dim=1)
        h = modulate(self.norm1(x), chunks[0], chunks[1])
        attn = self.attn(h)
        branch = chunks[2].unsqueeze(1) * attn
        x = x + branch
        mlp_out = self.mlp(modulate(self.norm2(x), chunks[3], chunks[4]))
        gated = mlp_out * chunks[5].unsqueeze(1)
        return gated + x


class UpcastBlock(DiTBlock):
    """The same block, each sublayer's output upcast before its gate (Wan's ``ff_output.float()``)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa)).float()
        mlp = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + mlp.to(torch.float32) * gate_mlp.unsqueeze(1)


class SkipDiT(DiT):
    """A DiT with one more residual add outside the sublayers: a long skip over all blocks."""

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        first = x
        for block in self.blocks:
            x = block(x, c)
        x = x + 0.5 * first  # the extra residual add
        return self.unpatchify(self.final_layer(x, c))


def _plan(nfe: int = 4):
    return make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")


def test_a_residual_split_over_statements_compiles_to_the_same_result():
    plan = _plan()
    model = tiny_dit(3, depth=3)
    sched = random_schedule(plan, 3, random.Random(3), p=0.6)
    want = l2c_compile.compile(model, plan, sched)
    for block in model.blocks:
        block.__class__ = SplitBlock  # the same weights, the rewritten forward
    got = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    assert rel_error(got(noise, labels, 4.0), want(noise, labels, 4.0)) == 0.0
    assert rel_error(got(noise, labels, 4.0), reference.sample(model, plan, sched, noise, labels, 4.0)) <= 1e-5


def test_a_sublayer_output_is_followed_through_dtype_casts_to_its_gate_and_residual_add():
    plan = _plan()
    model = tiny_dit(5, depth=2)
    sched = random_schedule(plan, 2, random.Random(5), p=0.6)
    want = l2c_compile.compile(model, plan, sched)
    for block in model.blocks:
        block.__class__ = UpcastBlock  # the same weights, outputs cast before their gates
    subs = find_sublayers(trace_step(model, cfg=True))
    assert [s.key for s in subs] == [("attn", 0), ("mlp", 0), ("attn", 1), ("mlp", 1)]
    assert all(s.gate is not None and is_add(s.add) for s in subs)
    assert [s.value.op for s in subs] == ["call_module"] * 4  # the sublayer's own output, before the cast
    got = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    assert rel_error(got(noise, labels, 4.0), want(noise, labels, 4.0)) == 0.0


@pytest.mark.parametrize("mode", ["cache", "drop"])
def test_an_extra_residual_add_outside_the_sublayers_is_left_alone(mode):
    plan = _plan()
    base = tiny_dit(4, depth=2)
    model = SkipDiT(**{k: getattr(base, k) for k in ("input_size", "patch_size", "in_channels", "num_heads")},
                    hidden_size=32, depth=2, num_classes=5).eval()
    model.load_state_dict(base.state_dict())
    sched = random_schedule(plan, 2, random.Random(1), p=0.7)
    sched = dataclasses.replace(sched, mode=mode)
    compiled = l2c_compile.compile(model, plan, sched)
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-5
    subs = find_sublayers(trace_step(model, cfg=True))
    assert len(subs) == 4  # the skip add and the guidance arithmetic are not sublayers


def test_a_model_without_its_declared_sublayers_is_one_clear_error():
    class Renamed(DiT):
        pass

    renamed = Family("renamed-dit", (BlockGroup(("blocks",), (KindDecl("attn", "attn"), KindDecl("mlp", "ffn"))),),
                     classes={Renamed: ""})
    register_family(renamed)
    model = Renamed(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2,
                    num_classes=5)
    try:
        with pytest.raises(CompileError, match=r"^pass mark_sublayers failed: sublayer blocks\.0\.ffn \(mlp of block 0\) is not in the traced graph"):
            l2c_compile.compile(model, _plan(), None)
    finally:
        FAMILIES.pop("renamed-dit")  # the registry is process-wide: leave it as the suite found it
    with pytest.raises(L2CError, match="has no module 'stages'"):
        Family("staged", (BlockGroup(("stages",), renamed.groups[0].kinds),)).paths(model)


def test_uvit_declares_in_mid_and_out_blocks():
    model = tiny_uvit(0, depth=4)
    paths = sublayer_paths(model)
    assert paths[("attn", 0)] == "in_blocks.0.attn"
    assert paths[("mlp", 2)] == "mid_block.mlp"
    assert paths[("attn", 4)] == "out_blocks.1.attn"
    assert isinstance(model, UViT) and len(paths) == 10


@pytest.mark.parametrize("family", DECLARED)
def test_discovery_works_on_torch_export_graphs(family):
    model = case_model(family, 0, depth=2)
    fam = family_of(model)
    example = (torch.zeros(1, *latent_shape(model)), torch.zeros(1), example_condition(model, 1, False, "cpu"))
    exported = torch.export.export(model, example)
    split_projections(exported.graph_module, model, root="")  # FLUX's parallel branches (as trace_step does)
    paths, outputs = sublayer_paths(model), fam.outputs(model)
    subs = find_sublayers(exported.graph_module, paths, root="", outputs=outputs)
    slots = cache_slots(outputs)
    assert [s.key for s in subs] == [s for key in fam.layout(model).sublayer_keys() for s in slots[key]]
    kind = {path: k for (k, _), path in paths.items()}
    for sub in subs:
        # the output is made inside the sublayer's module (DiT: attention proj / MLP fc2; diffusers'
        # attention ends with its rescale division)
        assert sub.path in {fqn for fqn, _ in sub.value.meta["nn_module_stack"].values()}, sub.key
        assert is_add(sub.add) and sub.add.target == torch.ops.aten.add.Tensor
        assert (sub.gate is not None) == (kind[sub.path] in CASES[family].gated), sub.key
