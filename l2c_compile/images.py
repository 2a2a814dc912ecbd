"""Turning samples into pictures: VAE decoding, image grids, video frame strips and GIFs, atomic
PNG writes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

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
    from l2c_compile.diffusers.trust import check_folder

    check_folder(p)  # no code in it, only library classes named
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
    """L2CError unless a PNG can be written at ``path`` (checked before any sampling): a file whose
    name ends in ``.png`` (a ``.jpg`` name would hold PNG bytes) in a folder that can take it."""
    from l2c_compile.io import check_output_file

    check_output_file(path, "image")
    if Path(path).suffix.lower() != ".png":
        raise L2CError(f"cannot write the image to {path}: give a file name ending in .png (images are written as PNG)")


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


def video_strip(video: torch.Tensor, *, scale: int = 1) -> np.ndarray:
    """(N, 3, F, H, W) videos in [-1, 1] → one grid with a row per video and its F frames side by
    side (HxWx3 uint8), the picture of a video a reader opens most easily."""
    n, c, f, h, w = video.shape
    frames = video.permute(0, 2, 1, 3, 4).reshape(n * f, c, h, w)  # video-major: row i is video i
    return make_grid(frames, ncol=f, scale=scale)


def save_gif(video: torch.Tensor, path: str | os.PathLike[str], *, fps: int = 8, scale: int = 1) -> None:
    """(N, 3, F, H, W) videos in [-1, 1] → an animated GIF (Pillow) whose frame t shows the N
    videos' frame t side by side, looping; written atomically."""
    try:
        from PIL import Image
    except ImportError:
        raise L2CError("writing GIF files needs Pillow: pip install 'l2c-compile[images]'") from None
    n = video.shape[0]
    frames = [Image.fromarray(make_grid(video[:, :, t], ncol=n, scale=scale)) for t in range(video.shape[2])]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=round(1000 / fps), loop=0)


def comparison_figure(
    uncached: torch.Tensor,
    cached: torch.Tensor,
    row_names: list[str],
    *,
    title: str = "",
    scale: int = 2,
    panels: tuple[str, str] = ("uncached", "cached (L2C)"),
) -> Any:
    """Uncached and cached samples side by side: one row per class, the same seeds left and right.

    ``uncached`` and ``cached`` are (R·K, C, H, W) in row-major order (K samples of row 0, then
    row 1, …) with R = ``len(row_names)``; each row is labelled with its name. Returns a
    matplotlib Figure (no pyplot state is touched).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise L2CError("sample grids need matplotlib: pip install 'l2c-compile[images]'") from None
    rows = len(row_names)
    if uncached.shape != cached.shape or rows == 0 or len(uncached) % rows:
        raise L2CError(
            f"a comparison grid needs two batches of the same shape with K samples for each of "
            f"{rows} rows, got {tuple(uncached.shape)} and {tuple(cached.shape)}"
        )
    per_row, pad = len(uncached) // rows, 2
    grids = [make_grid(as_pictures(x), ncol=per_row, pad=pad, scale=scale) for x in (uncached, cached)]
    h = uncached.shape[-2] * scale  # a picture's height in the grid
    height, width = grids[0].shape[:2]
    # Place the panels in pixels (constrained layout would spread aspect-locked images apart).
    label_w = 20 + 7 * max(len(n) for n in row_names)  # room for the row labels, ~7 px a glyph
    gap = max(24, 100 - width)  # keeps the two panel titles apart when panels are narrow
    title_w = 20 + 7 * max((len(line) for line in title.splitlines()), default=0)
    side = max(10, title_w - (label_w + 2 * width + gap))
    top, bottom = 62 if title else 30, 10
    fig_w, fig_h = label_w + 2 * width + gap + side, top + height + bottom
    dpi = 100
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = [
        fig.add_axes((x0 / fig_w, bottom / fig_h, width / fig_w, height / fig_h))
        for x0 in (label_w, label_w + width + gap)
    ]
    for ax, grid, name in zip(axes, grids, panels, strict=True):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(rows)], row_names, fontsize=9)
        ax.tick_params(length=0)
        for side_spine in ax.spines.values():
            side_spine.set_visible(False)
    axes[1].set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 4 / fig_h, va="top")
    return fig


def save_figure(fig: Any, path: str | os.PathLike[str]) -> None:
    """Write a matplotlib Figure as PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
