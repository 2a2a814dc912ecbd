"""The compiled sampler's call contract and compile's promise to leave the caller's model alone.

Issue 12, items 3, 4 and 6: every bad input is one L2CError naming the valid range or type;
unconditional sampling is asked for with ``labels=None``; compiling never changes the model it
was given, samplers from one model are independent, and moving a sampler's own weights to another
dtype afterwards is a clear error rather than a dtype crash inside the graph.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.errors import L2CError
from l2c_compile.families import fp32_kept, get_family, latent_shape, model_dtype
from l2c_compile.runtime.devices import available_devices, resolve_device
from l2c_compile.samplers import make_plan
from tests.families import DECLARED, case_model, case_plan
from tests.helpers import inputs, rel_error, tiny_dit

PLAN = make_plan("ddim", 3)


@pytest.fixture(scope="module")
def dit_sampler():
    model = tiny_dit()  # 5 classes, null class 5
    return model, l2c_compile.compile(model, PLAN, None)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (
            torch.tensor([0, 5]),
            r"label 5 is out of range: this model has classes 0\.\.4 \(the null class: pass labels=None",
        ),
        (torch.tensor([11, 0]), r"label 11 is out of range: this model has classes 0\.\.4$"),
        (torch.tensor([-1, 0]), r"label -1 is out of range: this model has classes 0\.\.4$"),
        (
            torch.tensor([0.0, 1.0]),
            r"labels must be integer class ids \(torch\.long\), got torch\.float32",
        ),
        (torch.tensor([True, False]), r"labels must be integer class ids"),
        ([0, 1], r"labels must be a torch\.Tensor of integer class ids, shape \(2,\), got list"),
        (torch.tensor([0, 1, 2]), r"labels must have shape \(2,\), got \(3,\)"),
    ],
)
def test_bad_labels_are_one_clear_error(dit_sampler, labels, match) -> None:
    model, sampler = dit_sampler
    noise, _ = inputs(model)
    with pytest.raises(L2CError, match=match):
        sampler(noise, labels, 4.0)


def test_the_latent_shape_is_the_model_s_own_or_its_square_side() -> None:
    """What every sampler's noise and every capture's example input is shaped from."""

    class Square(nn.Module):
        in_channels, input_size = 4, 8

    class Video(nn.Module):
        in_channels, latent_shape = 4, (4, 3, 4, 6)  # (C, F, H, W)

    assert latent_shape(Square()) == (4, 8, 8)
    assert latent_shape(Video()) == (4, 3, 4, 6)
    with pytest.raises(L2CError, match="Linear states no latent shape: give it latent_shape") as exc:
        latent_shape(nn.Linear(2, 2))
    assert "\n" not in str(exc.value)


def test_the_model_dtype_is_its_first_parameter_s_outside_modules_kept_in_float32() -> None:
    class Kept(nn.Module):
        _keep_in_fp32_modules = ("norm",)

        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(4)  # first, and kept in float32 (diffusers' Wan keeps its norms)
            self.proj = nn.Linear(4, 4)

    kept = Kept()
    kept.proj.bfloat16()
    assert set(fp32_kept(kept).values()) == {"norm.weight", "norm.bias"}
    assert model_dtype(kept) == torch.bfloat16 and next(kept.parameters()).dtype == torch.float32
    dit = tiny_dit()
    assert fp32_kept(dit) == {} and model_dtype(dit.bfloat16()) == torch.bfloat16
    assert model_dtype(nn.ReLU()) == torch.float32  # no parameters


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        ([[0.0]], r"noise must be a torch\.Tensor of shape \(N, 4, 8, 8\), got list"),
        (
            torch.zeros(2, 4, 8),
            r"noise must have shape \(N, 4, 8, 8\) with N >= 1, got \(2, 4, 8\)",
        ),
        (torch.zeros(0, 4, 8, 8), r"with N >= 1, got \(0, 4, 8, 8\)"),
        (torch.zeros(2, 4, 8, 8, dtype=torch.long), r"noise must be a floating-point tensor"),
    ],
)
def test_bad_noise_is_one_clear_error(dit_sampler, noise, match) -> None:
    _, sampler = dit_sampler
    with pytest.raises(L2CError, match=match):
        sampler(noise, torch.tensor([0, 1]), 4.0)


@pytest.mark.parametrize("scale", ["4", float("nan"), torch.ones(2), True])
def test_bad_cfg_scale_is_one_clear_error(dit_sampler, scale) -> None:
    model, sampler = dit_sampler
    noise, labels = inputs(model)
    with pytest.raises(L2CError, match="cfg_scale must be"):
        sampler(noise, labels, scale)


def test_output_is_float32_for_any_noise_dtype(dit_sampler) -> None:
    model, sampler = dit_sampler
    noise, labels = inputs(model)
    want = sampler(noise, labels, 4.0)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        got = sampler(noise.to(dtype), labels, 4.0)
        assert got.dtype == torch.float32
    assert rel_error(sampler(noise.double(), labels, 4.0), want) == 0.0


@pytest.mark.parametrize("family", DECLARED)
def test_unconditional_sampling_is_asked_for_with_labels_none(family) -> None:
    if get_family(family).guidance != "null-class":
        pytest.skip(f"family {family} guides against a {get_family(family).guidance}: no null class to sample with")
    model = case_model(family)
    plan = case_plan(family, 3)
    sampler = l2c_compile.compile(model, plan, None)
    noise, _ = inputs(model)
    null = torch.full((2,), model.null_class, dtype=torch.long)
    got = sampler(noise, None)  # no cfg_scale needed: guidance cannot change unconditional rows
    want = reference.sample(model, plan, None, noise, null, 1.0)
    assert rel_error(got, want) <= 1e-5
    assert rel_error(sampler(noise, None, 7.0), got) <= 1e-6
    uncond_only = l2c_compile.compile(model, plan, None, cfg=False)
    assert rel_error(uncond_only(noise, None), want) <= 1e-5


def test_model_without_null_class_refuses_unconditional() -> None:
    model = tiny_dit(class_dropout_prob=0.0)
    sampler = l2c_compile.compile(model, PLAN, None, cfg=False)
    noise, labels = inputs(model)
    sampler(noise, labels)
    with pytest.raises(L2CError, match="has no null class"):
        sampler(noise, None)


# ── item 6: the caller's model is never changed ─────────────────────────────────────────────


def _snapshot(model: torch.nn.Module):
    return (
        model.training,
        repr(model),
        {k: (v.dtype, v.device, v.clone()) for k, v in model.state_dict().items()},
        [id(p) for p in model.parameters()],
    )


@pytest.mark.parametrize("fuse", [True, False])
def test_compile_never_changes_the_callers_model(fuse: bool) -> None:
    model = tiny_dit().train()  # a model left in training mode must stay there
    before = _snapshot(model)
    f32 = l2c_compile.compile(model, PLAN, None, fuse=fuse)
    bf16 = l2c_compile.compile(model, PLAN, None, dtype="bfloat16", fuse=fuse)
    after = _snapshot(model)
    assert after[0] == before[0] and after[1] == before[1] and after[3] == before[3]
    for k, (dtype, device, value) in before[2].items():
        assert after[2][k][0] == dtype and after[2][k][1] == device
        assert torch.equal(after[2][k][2], value), k
    # the samplers are independent: the float32 one still runs, and matches a fresh compile
    noise, labels = inputs(model)
    assert f32(noise, labels, 4.0).dtype == torch.float32
    assert bf16(noise, labels, 4.0).dtype == torch.float32
    shared = {p.data_ptr() for p in f32.model.parameters()} & {
        p.data_ptr() for p in model.parameters()
    }
    assert not shared
    # later edits to the caller's weights do not leak into a sampler
    want = f32(noise, labels, 4.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert rel_error(f32(noise, labels, 4.0), want) == 0.0


def test_moved_weights_are_a_clear_error(dit_sampler) -> None:
    model = tiny_dit()
    sampler = l2c_compile.compile(model, PLAN, None)
    noise, labels = inputs(model)
    sampler.model.to(torch.bfloat16)
    with pytest.raises(L2CError, match=r"compiled for float32 weights but they are now bfloat16"):
        sampler(noise, labels, 4.0)
    sampler.model.to(torch.float32)
    sampler(noise, labels, 4.0)


# ── item 4: devices ──────────────────────────────────────────────────────────────────────────


def test_unavailable_devices_are_one_line() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None) is None
    missing = [d for d in ("cuda", "cuda:7", "mps", "xpu") if d not in available_devices()]
    for name in missing:
        with pytest.raises(
            L2CError, match=rf"device '{name}.*' is not available.*available here: cpu"
        ):
            resolve_device(name)
    with pytest.raises(L2CError, match=r"unknown device 'gpu0'; available here: cpu"):
        resolve_device("gpu0")
    if "cuda" in missing:
        with pytest.raises(L2CError, match="is not available"):
            l2c_compile.compile(tiny_dit(), PLAN, None, device="cuda")
