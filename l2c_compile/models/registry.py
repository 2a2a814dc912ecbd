"""The model registry: every supported architecture by name, and how to build, load and save it.

``MODELS`` maps a name (``"DiT-XL/2"``, ``"DiT-XL/2-512"``, ``"U-ViT-H/2"``, the tiny test models)
to a :class:`ModelSpec`: constructor arguments plus what a sampler needs to know about the model
(latent shape, noise schedule, timestep convention, default sampler and guidance scale). The CLI's
choices come from here. Checkpoint I/O lives in ``checkpoint.py`` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import nn

from l2c_compile.errors import L2CError, suggest
from l2c_compile.fmnist.specs import fmnist_specs
from l2c_compile.models.checkpoint import load_checkpoint, save_checkpoint
from l2c_compile.models.dit import DiT
from l2c_compile.models.spec import FAMILIES, ModelSpec

#################################################################################
#                                  The registry                                 #
#################################################################################

_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
_DIT_OFFICIAL = {("XL", 2, 256): "DiT-XL-2-256x256.pt", ("XL", 2, 512): "DiT-XL-2-512x512.pt"}

# (constructor depth, width, heads, conv output layer) of the U-ViT paper's ImageNet-256 models;
# only L and H have upstream configs (L keeps the default 3×3 conv head, H has none).
_UVIT_SIZES = {
    "S": (12, 512, 8, True),
    "M": (16, 768, 12, True),
    "L": (20, 1024, 16, True),
    "H": (28, 1152, 16, False),
}


def _dit_spec(
    name: str,
    *,
    input_size: int,
    patch: int,
    hidden: int,
    depth: int,
    heads: int,
    num_classes: int,
    description: str,
) -> ModelSpec:
    kwargs = dict(
        input_size=input_size,
        patch_size=patch,
        in_channels=4,
        hidden_size=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        class_dropout_prob=0.1,
        num_classes=num_classes,
        learn_sigma=True,
    )
    return ModelSpec(
        name,
        "dit",
        kwargs,
        (4, input_size, input_size),
        num_classes,
        "linear",
        "discrete",
        "ddim",
        4.0,
        False,
        description,
    )


def _uvit_spec(
    name: str,
    *,
    img_size: int,
    hidden: int,
    depth: int,
    heads: int,
    conv: bool,
    num_classes: int,
    description: str,
    pixel_space: bool = False,
) -> ModelSpec:
    kwargs = dict(
        img_size=img_size,
        patch_size=2,
        in_chans=4,
        embed_dim=hidden,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=False,
        mlp_time_embed=False,
        num_classes=num_classes + 1,
        conv=conv,
        skip=True,
    )
    return ModelSpec(
        name,
        "uvit",
        kwargs,
        (4, img_size, img_size),
        num_classes,
        "scaled_linear",
        "continuous",
        "dpm-solver-2",
        0.4,
        pixel_space,
        description,
    )


def _build_registry() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for res, latent, suffix in ((256, 32, ""), (512, 64, "-512")):
        for size, (depth, hidden, heads) in _DIT_SIZES.items():
            for patch in (2, 4, 8):
                name = f"DiT-{size}/{patch}{suffix}"
                weights = _DIT_OFFICIAL.get((size, patch, res))
                origin = f"official weights {weights}" if weights else "no official weights"
                specs.append(
                    _dit_spec(
                        name,
                        input_size=latent,
                        patch=patch,
                        hidden=hidden,
                        depth=depth,
                        heads=heads,
                        num_classes=1000,
                        description=f"DiT-{size}/{patch}, ImageNet {res}px (latent 4x{latent}x{latent}); {origin}",
                    )
                )
    for size, (depth, hidden, heads, conv) in _UVIT_SIZES.items():
        weights = (
            "official weights imagenet256_uvit_huge.pth" if size == "H" else "no official weights"
        )
        specs.append(
            _uvit_spec(
                f"U-ViT-{size}/2",
                img_size=32,
                hidden=hidden,
                depth=depth,
                heads=heads,
                conv=conv,
                num_classes=1000,
                description=f"U-ViT-{size}/2, ImageNet 256px (latent 4x32x32), {depth + 1} blocks; {weights}",
            )
        )
    # Tiny models for tests and demos: no VAE exists for them, so their outputs count as images.
    specs.append(
        ModelSpec(
            "DiT-Tiny",
            "dit",
            dict(
                input_size=16,
                patch_size=2,
                in_channels=4,
                hidden_size=64,
                depth=3,
                num_heads=4,
                mlp_ratio=4.0,
                class_dropout_prob=0.1,
                num_classes=10,
                learn_sigma=True,
            ),
            (4, 16, 16),
            10,
            "linear",
            "discrete",
            "ddim",
            4.0,
            True,
            "tiny DiT for tests (3 blocks, width 64, 10 classes); random weights",
        )
    )
    specs.append(
        _uvit_spec(
            "U-ViT-Tiny",
            img_size=16,
            hidden=64,
            depth=4,
            heads=4,
            conv=False,
            num_classes=10,
            pixel_space=True,
            description="tiny U-ViT for tests (5 blocks, width 64, 10 classes); random weights",
        )
    )
    return {s.name: s for s in specs}


MODELS: dict[str, ModelSpec] = _build_registry()


def _register_reference_models() -> None:
    """Add the Fashion-MNIST reference models trained in this repository (weights ship as package data)."""
    MODELS.update(fmnist_specs())


_register_reference_models()

__all__ = [  # checkpoint I/O is re-exported: callers find everything about models here
    "MODELS",
    "ModelSpec",
    "build_model",
    "count_params",
    "depth_units",
    "extrapolate_depth",
    "get_spec",
    "init_random",
    "load_checkpoint",
    "num_blocks",
    "save_checkpoint",
    "with_depth_units",
]


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name`` (case-insensitive); L2CError with a suggestion otherwise."""
    if name in MODELS:
        return MODELS[name]
    folded = {k.lower(): v for k, v in MODELS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise L2CError(f"unknown model {name!r}{suggest(name, list(MODELS))}; see `l2c-compile models`")


def _resolve(name_or_spec: str | ModelSpec) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)


def build_model(name_or_spec: str | ModelSpec, *, device: str | torch.device = "cpu") -> nn.Module:
    """Instantiate a model in eval mode with the official init; ``device="meta"`` allocates nothing."""
    spec = _resolve(name_or_spec)
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise L2CError(f"invalid device {device!r}: {exc}") from None
    with dev:
        model = FAMILIES[spec.family](**spec.kwargs)
    model.model_name = spec.name
    return model.eval()


def num_blocks(spec: str | ModelSpec) -> int:
    """Number of cacheable blocks (DiT: depth; U-ViT: depth // 2 * 2 + 1), from the family's
    declared :class:`~l2c_compile.families.Shape`."""
    spec = _resolve(spec)
    return spec.shape.blocks(int(spec.kwargs["depth"]))


def depth_units(spec: str | ModelSpec) -> int:
    """How many identical repeating units the model has (DiT: blocks; U-ViT: in/out block pairs)."""
    spec = _resolve(spec)
    return spec.shape.units(int(spec.kwargs["depth"]))


def with_depth_units(spec: ModelSpec, units: int) -> ModelSpec:
    """The same architecture with ``units`` repeating units (for counting by extrapolation)."""
    return dataclasses.replace(
        spec, name=f"{spec.name}@{units}", kwargs={**spec.kwargs, "depth": spec.shape.depth(units)}
    )


def extrapolate_depth(spec: ModelSpec, measure: Callable[[ModelSpec], int]) -> int:
    """``measure`` of the full model, from the same model with 1 and 2 units (cost is affine in depth)."""
    one, two = measure(with_depth_units(spec, 1)), measure(with_depth_units(spec, 2))
    return one + (depth_units(spec) - 1) * (two - one)


def _meta_params(spec: ModelSpec) -> int:
    return sum(p.numel() for p in build_model(spec, device="meta").parameters())


@functools.cache
def _count_params(spec: ModelSpec) -> int:
    return extrapolate_depth(spec, _meta_params)


def count_params(spec: str | ModelSpec) -> int:
    """Parameter count, from meta-device builds (nothing is allocated)."""
    return _count_params(_resolve(spec))


#################################################################################
#                         Random weights for tests and demos                    #
#################################################################################


def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, non-degenerate random weights: every sublayer matters, activations stay O(1).

    Unlike the official init (adaLN-Zero, zero output layer), no gate or projection is zero, so
    caching any sublayer changes the output. Linears are N(0, 1/fan_in) so widths keep their
    scale; DiT's adaLN projections are scaled down (gates ~0.1) and U-ViT's residual-branch outputs
    too (it has no gates), so nothing grows through 28 blocks. DiT's fixed sin-cos table is kept.
    """
    if any(p.is_meta for p in model.parameters()):
        raise L2CError("init_random needs a materialised model, not one on the meta device")
    gen = torch.Generator().manual_seed(seed)
    branch_scale = 1.0 if isinstance(model, DiT) else 0.5

    def fill(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(
            torch.randn(t.shape, generator=gen) * std + mean
        )  # drawn on CPU: device-independent

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                std = m.in_features**-0.5
                if "adaLN_modulation" in name:
                    std *= 0.3
                elif name.endswith(("attn.proj", "mlp.fc2")):
                    std *= branch_scale
                fill(m.weight, std)
                if m.bias is not None:
                    fill(m.bias, 0.02)
            elif isinstance(m, nn.Conv2d):
                fill(m.weight, (m.weight[0].numel()) ** -0.5)
                if m.bias is not None:
                    fill(m.bias, 0.02)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                fill(m.weight, 0.1, mean=1.0)
                fill(m.bias, 0.02)
            elif isinstance(m, nn.Embedding):
                fill(m.weight, 0.5)
        pos = getattr(model, "pos_embed", None)
        if (
            isinstance(pos, nn.Parameter) and pos.requires_grad
        ):  # learned (U-ViT), not DiT's fixed table
            fill(pos, 0.1)
    return model
