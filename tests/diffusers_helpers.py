"""Tiny random diffusers DiT models and pipelines, built from configs (no hub access)."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_transformer(seed: int = 0, *, layers: int = 2, heads: int = 2, patch: int = 2, learn_sigma: bool = True):
    """A random ``DiTTransformer2DModel`` (1000 classes + the null row, as DiTPipeline assumes)."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=heads, attention_head_dim=8, in_channels=4, out_channels=8 if learn_sigma else 4,
        num_layers=layers, sample_size=8, patch_size=patch, num_embeds_ada_norm=1000)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # diffusers zero-initialises the adaLN gates; random weights exercise every path
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def tiny_pipeline(seed: int = 0, *, layers: int = 2):
    """A ``DiTPipeline`` with a tiny random transformer and VAE and diffusers' DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        layers_per_block=1, norm_num_groups=4, sample_size=8).eval()
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=False, num_train_timesteps=1000)
    return DiTPipeline(transformer=tiny_transformer(seed, layers=layers), vae=vae, scheduler=scheduler)


def save_tiny_pipeline(folder: Path, seed: int = 0, *, layers: int = 2) -> Path:
    """``tiny_pipeline`` written with ``save_pretrained``; returns the folder."""
    tiny_pipeline(seed, layers=layers).save_pretrained(folder)
    return folder
