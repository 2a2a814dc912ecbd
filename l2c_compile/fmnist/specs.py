"""The two Fashion-MNIST reference models as registry specs, with their shipped weights.

Both are pixel-space, class-conditional (10 classes + the CFG null class), 1×32×32 inputs with
patch 4, so their blocks see 64 patch tokens: sized so that a 2-core CPU evaluates 1,000 samples
in a few minutes, while 6 DiT blocks / 7 U-ViT blocks (12 / 14 cacheable sublayers per step) leave
a schedule real choices to make.

- ``DiT-FMNIST``: the DiT convention (integer timesteps, DDIM, ε only, no learned σ).
- ``U-ViT-FMNIST``: the U-ViT convention (continuous time ``t · 1000``, DPM-Solver-2).

Both use the Stable-Diffusion ``scaled_linear`` β table, not DiT's ``linear``. The samplers here
are linear plans (no x0 clipping), so an ε error δ at the first call t = 999 lands in the image
as δ/sqrt(ᾱ_T) and stays there. With ``linear`` (ᾱ_T = 4.0e-5) that is 157·δ: a DiT trained
for 800 steps with ε-MSE 0.004 at t = 999 gave saturated blobs, and weighting the loss towards
high t (v-loss) helped too slowly. ``scaled_linear`` (ᾱ_T = 4.7e-3) amplifies 14.6·δ. Its cost
is a signal leak at T: the image mean shows in x_T as sqrt(ᾱ_T)·(−0.56) = −0.038 against a noise
std of 1/32 for a 32×32 mean, which the model may read; with the prior spread of image means
(std 0.19) the posterior shift this causes when sampling from pure noise is about +0.08 in mean
brightness, a mild bias we accept.

This module imports nothing from the registry at import time, so the registry can import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parent.parent / "assets"

DIT_FMNIST_KWARGS: dict[str, Any] = dict(
    input_size=32,
    patch_size=4,
    in_channels=1,
    hidden_size=128,
    depth=6,
    num_heads=4,
    mlp_ratio=4.0,
    class_dropout_prob=0.1,
    num_classes=10,
    learn_sigma=False,
)
UVIT_FMNIST_KWARGS: dict[str, Any] = dict(
    img_size=32,
    patch_size=4,
    in_chans=1,
    embed_dim=128,
    depth=6,
    num_heads=4,
    mlp_ratio=4.0,
    qkv_bias=False,
    mlp_time_embed=False,
    num_classes=11,
    conv=True,
    skip=True,
)

SPEC_FIELDS: dict[str, dict[str, Any]] = {
    "DiT-FMNIST": dict(
        name="DiT-FMNIST",
        family="dit",
        kwargs=DIT_FMNIST_KWARGS,
        latent_shape=(1, 32, 32),
        num_classes=10,
        noise_schedule="scaled_linear",
        time_input="discrete",
        default_sampler="ddim",
        default_cfg_scale=3.0,
        pixel_space=True,
        description="DiT trained here on Fashion-MNIST 32px (6 blocks, width 128, patch 4); shipped weights",
    ),
    "U-ViT-FMNIST": dict(
        name="U-ViT-FMNIST",
        family="uvit",
        kwargs=UVIT_FMNIST_KWARGS,
        latent_shape=(1, 32, 32),
        num_classes=10,
        noise_schedule="scaled_linear",
        time_input="continuous",
        default_sampler="dpm-solver-2",
        default_cfg_scale=2.0,
        pixel_space=True,
        description="U-ViT trained here on Fashion-MNIST 32px (7 blocks, width 128, patch 4); shipped weights",
    ),
}


def checkpoint_path(name: str) -> Path:
    """Where the shipped EMA weights of model ``name`` live (package data)."""
    return ASSETS / f"{name}.safetensors"


def card_path(name: str) -> Path:
    """Where the model card of model ``name`` lives (package data)."""
    return ASSETS / f"{name}.md"


def fmnist_specs() -> dict[str, Any]:
    """The two specs as registry ``ModelSpec``s, each pointing at its shipped checkpoint."""
    # Imported here: importing l2c_compile.models runs the registry, which imports this module.
    from l2c_compile.models.spec import ModelSpec

    return {
        name: ModelSpec(**fields, checkpoint=str(checkpoint_path(name)))
        for name, fields in SPEC_FIELDS.items()
    }
