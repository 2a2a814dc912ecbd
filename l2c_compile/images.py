"""Turning samples into pictures: VAE decoding, image grids, atomic PNG writes."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from l2c_compile.errors import L2CError
from l2c_compile.io import atomic_path

VAE_SCALE = 0.18215  # SD VAE latent scale used by DiT and U-ViT


def load_vae_decoder(
    path: str | os.PathLike[str], *, latent_channels: int | None = None, device: str | torch.device = "cpu"
) -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` from a local folder, checked before any sampling.

    Never touches the network: the folder must exist and hold ``config.json`` (a hub name or a
    missing path is an L2CError, not a download attempt). ``latent_channels``: the sampler's
    latent channels, which the VAE must take.
    """
    p = Path(path)
    if not p.is_dir():
        raise L2CError(f"VAE folder not found: {p} (expected a local diffusers AutoencoderKL folder)")
    if not (p / "config.json").is_file():
        raise L2CError(f"{p} is not a diffusers AutoencoderKL folder: it has no config.json")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise L2CError("decoding latents needs diffusers: pip install 'l2c-compile[interop]'") from None
    try:  # an absolute existing folder: diffusers reads it and never resolves a hub name
        vae = AutoencoderKL.from_pretrained(str(p.resolve()), local_files_only=True)
    except Exception as exc:  # diffusers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2CError(f"cannot load a diffusers AutoencoderKL from {p}: {first}") from None
    channels = getattr(vae.config, "latent_channels", None)
    if latent_channels is not None and channels is not None and channels != latent_channels:
        raise L2CError(
            f"the VAE in {p} decodes {channels}-channel latents but the sampler draws {latent_channels}"
        )
    return vae.to(device).eval()


def decode_latents(
    latents: torch.Tensor, vae: torch.nn.Module | str | os.PathLike[str]
) -> torch.Tensor:
    """Decode (N, 4, h, w) latents with a VAE (or a local folder holding one) → images in [-1, 1]."""
    if not isinstance(vae, torch.nn.Module):
        vae = load_vae_decoder(vae, latent_channels=latents.shape[1], device=latents.device)
    with torch.no_grad():
        return vae.decode(latents.float() / VAE_SCALE).sample.clamp(-1, 1)


def check_png_path(path: str | os.PathLike[str]) -> None:
    """L2CError unless a PNG can be written at ``path`` (checked before any sampling)."""
    from l2c_compile.io import check_output_file

    check_output_file(path, "image")


def latents_preview(latents: torch.Tensor) -> torch.Tensor:
    """A rough picture of latents without a VAE: first three channels, each min-max scaled."""
    x = latents[:, :3].float()
    if x.shape[1] < 3:
        x = x[:, :1].expand(-1, 3, -1, -1)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8) * 2 - 1


def as_pictures(x: torch.Tensor) -> torch.Tensor:
    """Pixel-space samples as pictures in [-1, 1]: 1/3-channel outputs as-is, others previewed."""
    return x.clamp(-1, 1) if x.shape[1] in (1, 3) else latents_preview(x)


def make_grid(images: torch.Tensor, *, ncol: int | None = None, pad: int = 2, scale: int = 1) -> np.ndarray:
    """(N, C, H, W) images in [-1, 1] → one HxWx3 uint8 grid (C = 1 or 3)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    if c == 1:
        x = x.expand(-1, 3, -1, -1)
    if scale > 1:
        x = x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
        h, w = h * scale, w * scale
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = x[i].permute(1, 2, 0).numpy()
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write an HxWx3 uint8 array as PNG, atomically."""
    try:
        from PIL import Image
    except ImportError:
        raise L2CError("writing PNG files needs Pillow: pip install 'l2c-compile[images]'") from None
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
