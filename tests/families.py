"""Every declared model family's tiny test model, in one place: a family joins the suite here.

``CASES`` names, per family declared in :mod:`l2c_compile.families` (and the test-only toy FLUX
family of ``tests/toy_flux.py``), how to build a small random model of it (at a requested depth and
width), its seeded inputs, its guidance scale and the manifest record an artifact rebuilds it
from. ``DECLARED`` is the list of declared families; the contract suite
(``test_family_contract.py``) and every test that should hold for each family parametrize over
it, so a new family is covered everywhere by adding its one :class:`Case` here (the contract
suite's ``test_every_declared_family_joins_the_contract_suite`` fails until it has one).

Where a test's feature does not apply to a family, the test skips it by a property of the family
declaration or of its Case (``gated``, ``variants``, the model's capture…), never by its name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.families import FAMILIES, get_family, latent_shape
from l2c_compile.samplers import make_plan
from l2c_compile.samplers.base import SamplerPlan
from tests.helpers import tiny_dit, tiny_uvit
from tests.toy_flux import tiny_toy_flux

DIT_CONFIG = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=5,
                  learn_sigma=True)
UVIT_CONFIG = dict(img_size=8, patch_size=2, in_chans=4, embed_dim=32, depth=2, num_heads=2, num_classes=6)
TOY_FLUX_CONFIG = dict(hidden_size=32, double=2, single=2)


# -- builders: (seed, depth, width, **overrides) → model ----------------------------------------
# ``depth``: the number of blocks asked for (None: the tiny default), or the nearest the family's
# shape allows (U-ViT: depth // 2 in-blocks, a mid-block, depth // 2 out-blocks). ``width``: the
# hidden size (None: the tiny default). The model remembers its kwargs for its manifest record.


def _dit(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    kwargs = {**DIT_CONFIG, **_given(depth=depth, hidden_size=width), **overrides}
    return _remember(tiny_dit(seed, **kwargs), kwargs)


def _uvit(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    kwargs = {**UVIT_CONFIG, **_given(depth=depth, embed_dim=width), **overrides}
    return _remember(tiny_uvit(seed, **kwargs), kwargs)


def _toy_flux(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    blocks = {} if depth is None else {"double": (depth + 1) // 2, "single": depth // 2}
    kwargs = {**TOY_FLUX_CONFIG, **blocks, **_given(hidden_size=width), **overrides}
    return _remember(tiny_toy_flux(seed, **kwargs), kwargs)


def _diffusers_dit(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    pytest.importorskip("diffusers")
    from l2c_compile.diffusers.dit import DiffusersDiT
    from tests.diffusers_helpers import tiny_transformer

    kwargs = {**_given(layers=depth, heads=None if width is None else width // 8), **overrides}
    return DiffusersDiT(tiny_transformer(seed, **kwargs)).eval()


def _pixart(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    pytest.importorskip("diffusers")
    pytest.importorskip("transformers")
    from l2c_compile.diffusers.pixart import DiffusersPixArt
    from tests.diffusers_helpers import TEXT_LEN, tiny_pixart_transformer

    kwargs = {**_given(layers=depth, heads=None if width is None else width // 8), **overrides}
    return DiffusersPixArt(tiny_pixart_transformer(seed, **kwargs), text_len=TEXT_LEN).eval()


def _sd3(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    pytest.importorskip("diffusers")
    from l2c_compile.diffusers.sd3 import DiffusersSD3
    from tests.diffusers_helpers import SD3_TEXT_LEN, tiny_sd3_transformer

    kwargs = {**_given(layers=depth, heads=None if width is None else width // 8), **overrides}
    return DiffusersSD3(tiny_sd3_transformer(seed, **kwargs), text_len=SD3_TEXT_LEN).eval()


def _flux(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    pytest.importorskip("diffusers")
    from l2c_compile.diffusers.flux import DiffusersFlux
    from tests.diffusers_helpers import FLUX_TEXT_LEN, tiny_flux_transformer

    split = {} if depth is None else {"layers": max(1, depth // 2), "single_layers": max(1, depth - depth // 2)}
    kwargs = {**split, **_given(heads=None if width is None else width // 8), **overrides}
    return DiffusersFlux(tiny_flux_transformer(seed, **kwargs), text_len=FLUX_TEXT_LEN, height=64).eval()


def _wan(seed: int, depth: int | None, width: int | None, **overrides) -> nn.Module:
    pytest.importorskip("diffusers")
    from l2c_compile.diffusers.wan import DiffusersWan
    from tests.diffusers_helpers import WAN_SIZE, WAN_TEXT_LEN, tiny_wan_transformer

    kwargs = {**_given(layers=depth, heads=None if width is None else width // 8), **overrides}
    return DiffusersWan(tiny_wan_transformer(seed, **kwargs), text_len=WAN_TEXT_LEN, **WAN_SIZE).eval()


def _given(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


def _remember(model: nn.Module, kwargs: dict[str, Any]) -> nn.Module:
    model.case_kwargs = dict(kwargs)
    return model


# -- inputs: (model, seed, batch) → (noise, the condition a guided sampler takes) ----------------


def _class_inputs(model: nn.Module, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, *latent_shape(model), generator=g)
    return noise, torch.randint(0, model.null_class, (batch,), generator=g)


def _pixart_inputs(model: nn.Module, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    from l2c_compile.diffusers.pixart import pack_condition
    from tests.diffusers_helpers import prompt_inputs

    p = prompt_inputs(batch, seed)
    y = torch.stack([pack_condition(p["prompt_embeds"], p["prompt_attention_mask"]),
                     pack_condition(p["negative_prompt_embeds"], p["negative_prompt_attention_mask"])], dim=1)
    noise = torch.randn(batch, *latent_shape(model), generator=torch.Generator().manual_seed(seed))
    return noise, y


def _sd3_inputs(model: nn.Module, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    from l2c_compile.diffusers.sd3 import pack_condition
    from tests.diffusers_helpers import sd3_prompt_inputs

    p = sd3_prompt_inputs(batch, seed)
    y = torch.stack([pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"]),
                     pack_condition(p["negative_prompt_embeds"], p["negative_pooled_prompt_embeds"])], dim=1)
    noise = torch.randn(batch, *latent_shape(model), generator=torch.Generator().manual_seed(seed))
    return noise, y


def _flux_inputs(model: nn.Module, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    from l2c_compile.diffusers.flux import pack_condition
    from tests.diffusers_helpers import flux_prompt_inputs

    p = flux_prompt_inputs(batch, seed)
    y = torch.stack([pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"], 3.5),
                     pack_condition(p["negative_prompt_embeds"], p["negative_pooled_prompt_embeds"], 3.5)], dim=1)
    noise = torch.randn(batch, *latent_shape(model), generator=torch.Generator().manual_seed(seed))
    return noise, y


def _wan_inputs(model: nn.Module, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    from tests.diffusers_helpers import wan_prompt_inputs

    p = wan_prompt_inputs(batch, seed)
    y = torch.stack([p["prompt_embeds"], p["negative_prompt_embeds"]], dim=1)  # (N, 2, L, D)
    noise = torch.randn(batch, *latent_shape(model), generator=torch.Generator().manual_seed(seed))  # (N, C, F, H, W)
    return noise, y


# -- manifest records ---------------------------------------------------------------------------


def _record(name: str, family: str) -> Callable[[nn.Module], dict]:
    return lambda m: {"name": name, "family": family, "kwargs": dict(m.case_kwargs)}


def _diffusers_info(model: nn.Module) -> dict:
    from l2c_compile.diffusers.spec import spec_from_config

    t = model.transformer
    return spec_from_config(type(t).__name__, dict(t.config), getattr(model, "text_len", None),
                            height=getattr(model, "height", None), width=getattr(model, "width", None),
                            num_frames=getattr(model, "num_frames", None)).to_dict()


@dataclass(frozen=True)
class Case:
    """One family's tiny test model.

    ``build(seed, depth, width, **overrides)``: a random model (see the builders above);
    ``inputs(model, seed, batch=2)``: seeded noise and the condition a guided sampler takes;
    ``cfg_scale``: a guidance scale in the family's convention; ``info(model)``: the manifest
    record an artifact rebuilds the model from; ``gated``: the kinds whose cached outputs a block
    multiplies by an adaLN gate before adding them to the residual stream (a reused one keeps the
    gate, a dropped one loses it); ``variants``: architecture options the family's models come in
    (``build`` overrides), for tests that should see each; ``unguided(y)``: the condition an
    unguided sampler (``cfg=False``) takes, from the guided one ``inputs`` gives; ``exported``: the
    model is captured with torch.export (seconds per compile on CPU: a test that compiles it many
    times runs it under ``-m slow``, see :func:`params`).
    """

    build: Callable[..., nn.Module]
    inputs: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    cfg_scale: float
    info: Callable[[nn.Module], dict]
    gated: frozenset[str] = frozenset()
    variants: tuple[Mapping[str, Any], ...] = field(default_factory=lambda: ({},))
    unguided: Callable[[torch.Tensor], torch.Tensor] = lambda y: y
    exported: bool = False


CASES: dict[str, Case] = {
    "dit": Case(_dit, _class_inputs, 4.0, _record("tiny-dit", "dit"), gated=frozenset({"attn", "mlp"})),
    "uvit": Case(_uvit, _class_inputs, 0.4, _record("tiny-uvit", "uvit"),
                 variants=({}, {"mlp_time_embed": True})),
    "diffusers-dit": Case(_diffusers_dit, _class_inputs, 4.0, _diffusers_info, gated=frozenset({"attn", "mlp"}),
                          exported=True),
    "pixart": Case(_pixart, _pixart_inputs, 4.5, _diffusers_info, gated=frozenset({"attn", "mlp"}),
                   unguided=lambda y: y[:, 0], exported=True),  # y: (N, 2, L, D + 1), prompt first
    "sd3": Case(_sd3, _sd3_inputs, 5.0, _diffusers_info, gated=frozenset({"attn", "attn2", "mlp", "txt_mlp"}),
                unguided=lambda y: y[:, 0], exported=True),  # y: (N, 2, L + 1, W), prompt first
    "flux": Case(_flux, _flux_inputs, 2.0, _diffusers_info, gated=frozenset({"attn", "mlp", "txt_mlp"}),
                 variants=({}, {"guidance_embeds": False}), unguided=lambda y: y[:, 0],
                 exported=True),  # y: (N, 2, L + 1, W), prompt first (true CFG); dev and schnell
    "wan": Case(_wan, _wan_inputs, 5.0, _diffusers_info, gated=frozenset({"attn", "mlp"}),
                unguided=lambda y: y[:, 0], exported=True),  # y: (N, 2, L, D), prompt first; x: (N, C, F, H, W)
    "toy-flux": Case(_toy_flux, _class_inputs, 4.0, _record("toy-flux", "toy-flux"),
                     gated=frozenset({"attn", "mlp"})),
}
DECLARED = sorted(FAMILIES)  # every family declared at collection: the built-in ones and the toy


def params(slow_exported: str | None = None) -> list:
    """``DECLARED`` as pytest parameters; ``slow_exported``: the reason a test runs the families
    captured with torch.export only under ``-m slow`` (the contract suite covers them by default)."""
    return [pytest.param(n, marks=pytest.mark.slow(reason=slow_exported)) if slow_exported and CASES[n].exported
            else n for n in DECLARED]


def case_model(name: str, seed: int = 0, depth: int | None = None, width: int | None = None,
               **overrides: Any) -> nn.Module:
    """Family ``name``'s tiny random model (``depth`` blocks or the nearest its shape allows)."""
    return CASES[name].build(seed, depth, width, **overrides)


def case_inputs(name: str, model: nn.Module, seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded noise and condition for family ``name``'s ``model``."""
    return CASES[name].inputs(model, seed, batch)


def case_plan(name: str, nfe: int) -> SamplerPlan:
    """Family ``name``'s default sampler with ``nfe`` model calls, or the nearest fewer it can take
    (DPM-Solver-2 takes an even number)."""
    s = get_family(name).sampling
    for n in range(nfe, 0, -1):
        try:
            return make_plan(s.default_sampler, n, noise_schedule=s.noise_schedule, time_input=s.time_input)
        except L2CError:
            if n == 1:
                raise
    raise AssertionError("unreachable")

