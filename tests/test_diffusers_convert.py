"""Official DiT ↔ diffusers DiTTransformer2DModel: weights convert both ways, outputs agree."""

from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("diffusers")
import l2c_compile
from l2c_compile.diffusers import DiffusersDiT
from l2c_compile.diffusers.convert import (
    diffusers_to_official,
    from_diffusers,
    official_to_diffusers,
    to_diffusers,
)
from l2c_compile.errors import L2CError
from l2c_compile.samplers import make_plan
from tests.diffusers_helpers import tiny_transformer
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit


def _same_frequencies(transformer) -> None:
    """Test-only: give diffusers' timestep features the official frequencies (exponent / half)."""
    for block in transformer.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_round_trips_are_exact(learn_sigma):
    official = tiny_dit(0, depth=3, num_classes=1000, learn_sigma=learn_sigma)
    back = from_diffusers(to_diffusers(official))
    assert official.state_dict().keys() == back.state_dict().keys()
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in official.state_dict().items())
    dif = tiny_transformer(1, layers=2, learn_sigma=learn_sigma)
    for block in dif.transformer_blocks[1:]:  # official form: one embedder, shared by the blocks
        block.norm1.emb.load_state_dict(dif.transformer_blocks[0].norm1.emb.state_dict())
    again = to_diffusers(from_diffusers(dif))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in dif.state_dict().items())


@torch.no_grad()
def test_outputs_agree_up_to_diffusers_timestep_frequencies():
    official = tiny_dit(2, depth=2, num_classes=1000)
    dif = to_diffusers(official)
    x, labels = inputs(official, 2)
    t = torch.tensor([10.0, 700.0])
    want = official(x, t, labels)
    apart = rel_error(dif(x, timestep=t, class_labels=labels).sample, want)
    _same_frequencies(dif)
    assert rel_error(dif(x, timestep=t, class_labels=labels).sample, want) <= 1e-5 < apart


def test_both_layouts_compile_to_the_same_samples():
    official = tiny_dit(3, depth=2, num_classes=1000)
    dif = to_diffusers(official)
    _same_frequencies(dif)
    plan = make_plan("ddim", 6)
    sched = random_schedule(plan, 2, random.Random(3), p=0.8)
    noise, labels = inputs(official, 2)
    a = l2c_compile.compile(official, plan, sched, cfg=False)(noise, labels)
    b = l2c_compile.compile(DiffusersDiT(dif), plan, sched, cfg=False)(noise, labels)
    assert rel_error(b, a) <= 1e-5


def test_bad_state_dicts_are_one_line_errors():
    dif = tiny_transformer(0, layers=2)  # random per-block embedders: no official form
    with pytest.raises(L2CError, match=r"block 1's .* differs from block 0's"):
        diffusers_to_official(dif.state_dict())
    with pytest.raises(L2CError, match="not a DiT state dict"):
        official_to_diffusers({"x": torch.zeros(1)})
