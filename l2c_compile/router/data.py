"""Where router training gets its x0 from: a tensors file, an image folder, or the model itself.

Every source answers ``batch(indices, generator) -> (x0 (B, C, H, W) float32, labels (B,) int64)``
on the CPU, with all of its randomness (flips, VAE posterior noise) drawn from the generator it is
handed, so a training run is a pure function of its seed (that is what makes ``--resume`` exact).

* :class:`TensorData` — images or latents already in memory: a ``.safetensors`` file with
  ``latents`` or ``images`` plus ``labels``, an ``.npz`` with the same keys, or ``X.npy`` with its
  labels in ``X.labels.npy``; also the data-free pool of :func:`draw_self_data`.
* :class:`ImageFolderData` — ``root/<class>/*.png|jpg…`` (ImageFolder's sorted class order), ADM
  center crop and random horizontal flip as in the DiT recipe, encoded per batch by a local
  diffusers ``AutoencoderKL`` for latent models (latents scaled by 0.18215).
* :func:`draw_self_data` — data-free: x0 sampled from the model with its own uncached sampler.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.images import VAE_SCALE
from l2c_compile.inputs import input_file
from l2c_compile.models.registry import ModelSpec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
TENSOR_SUFFIXES = (".safetensors", ".npz", ".npy")

Encoder = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class TrainData(Protocol):
    """A finite, indexable source of training pairs (x0, label)."""

    description: str

    def __len__(self) -> int: ...

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 (B, C, H, W) float32 and labels (B,) int64 for ``indices``, on the CPU."""
        ...


# ---------------------------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------------------------


class VaeEncoder:
    """Images in [-1, 1] → SD-VAE latents · 0.18215, sampling the posterior from a generator."""

    def __init__(self, vae: nn.Module, scale: float = VAE_SCALE) -> None:
        self.vae = vae.eval().requires_grad_(False)
        self.scale = scale
        config = vae.config
        self.latent_channels = int(config.latent_channels)
        self.factor = 2 ** (len(config.block_out_channels) - 1)  # spatial downsampling
        self.in_channels = int(config.in_channels)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → (B, C, H/f, W/f) scaled latents on the CPU."""
        param = next(self.vae.parameters())
        dist = self.vae.encode(images.to(param.device, param.dtype)).latent_dist
        # Drawn on the CPU so the same seed gives the same latents on any device.
        noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        z = dist.mean + dist.std * noise  # (B, C, h, w)
        return (z * self.scale).float().cpu()


def load_vae(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> VaeEncoder:
    """A diffusers ``AutoencoderKL`` from a local folder (never a hub download)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise L2CError(
            "encoding images needs diffusers: pip install 'l2c-compile[interop]'"
        ) from None
    if not Path(path).is_dir():
        raise L2CError(f"VAE folder not found: {path}")
    from l2c_compile.diffusers.trust import check_folder

    check_folder(Path(path))  # no code in it, only library classes named
    try:
        vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # diffusers raises many types for a bad folder
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2CError(f"cannot load a diffusers AutoencoderKL from {path}: {first}") from None
    return VaeEncoder(vae.to(device))


def _check_vae(vae: VaeEncoder | None, spec: ModelSpec, what: str) -> VaeEncoder:
    if vae is None:
        raise L2CError(
            f"{spec.name} denoises VAE latents: {what} needs --vae PATH (a diffusers AutoencoderKL folder)"
        )
    if vae.latent_channels != spec.latent_shape[0]:
        raise L2CError(
            f"the VAE makes {vae.latent_channels}-channel latents but {spec.name} takes {spec.latent_shape[0]} channels"
        )
    return vae


# ---------------------------------------------------------------------------------------------
# In-memory tensors
# ---------------------------------------------------------------------------------------------


@dataclass
class TensorData:
    """Images or latents held in memory; ``encoder`` (if set) turns image batches into latents."""

    items: torch.Tensor  # (N, C, H, W) float32: x0 itself, or images for the encoder
    labels: torch.Tensor  # (N,) int64
    description: str
    encoder: Encoder | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 (B, C, H, W) and labels (B,) for ``indices``."""
        x = self.items[indices]  # (B, C, H, W)
        if self.encoder is not None:
            x = self.encoder(x, generator)
        return x.float(), self.labels[indices]


def _to_float_images(x: torch.Tensor, name: str) -> torch.Tensor:
    """uint8 images → [-1, 1]; float images are taken as already in [-1, 1]."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    if not x.is_floating_point():
        raise L2CError(f"{name}: images must be uint8 or floating point, got {x.dtype}")
    return x.float()


def _channels_first(x: torch.Tensor, channels: int) -> torch.Tensor:
    # Pillow/numpy images come as (N, H, W, C); models take (N, C, H, W).
    if x.dim() == 4 and x.shape[1] != channels and x.shape[3] == channels:
        return x.permute(0, 3, 1, 2).contiguous()
    return x


def _check_labels(labels: torch.Tensor, n: int, spec: ModelSpec, name: str) -> torch.Tensor:
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise L2CError(
            f"{name}: labels must be a 1-D integer array, got {labels.dtype} of shape {list(labels.shape)}"
        )
    if labels.shape[0] != n:
        raise L2CError(f"{name}: {n} samples but {labels.shape[0]} labels")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise L2CError(
            f"{name}: labels must lie in 0..{spec.num_classes - 1} for {spec.name}, "
            f"found {int(labels.min())}..{int(labels.max())}"
        )
    return labels.long()


def tensor_data(
    x: torch.Tensor,
    labels: torch.Tensor,
    spec: ModelSpec,
    *,
    kind: str,
    name: str,
    vae: VaeEncoder | None = None,
) -> TensorData:
    """Check ``x`` (``kind`` "latents" or "images") and ``labels`` against ``spec``; wrap them."""
    c, h, w = spec.latent_shape
    if x.dim() != 4 or x.shape[0] == 0:
        raise L2CError(
            f"{name}: {kind} must be a non-empty (N, C, H, W) array, got shape {list(x.shape)}"
        )
    labels = _check_labels(labels, int(x.shape[0]), spec, name)
    encoder: Encoder | None = None
    if kind == "latents" or (kind == "images" and spec.pixel_space):
        if kind == "images":
            x = _to_float_images(_channels_first(x, c), name)
        if tuple(x.shape[1:]) != (c, h, w):
            raise L2CError(
                f"{name}: {kind} have shape {list(x.shape[1:])} but {spec.name} takes {[c, h, w]}"
            )
        if not x.is_floating_point():
            raise L2CError(f"{name}: latents must be floating point, got {x.dtype}")
    elif kind == "images":
        vae = _check_vae(vae, spec, f"{name} holds images, so it")
        x = _to_float_images(_channels_first(x, vae.in_channels), name)
        want = (vae.in_channels, h * vae.factor, w * vae.factor)
        if tuple(x.shape[1:]) != want:
            raise L2CError(
                f"{name}: images have shape {list(x.shape[1:])} but {spec.name} with this VAE needs {list(want)}"
            )
        encoder = vae
    else:
        raise L2CError(f"{name}: unknown kind {kind!r} (latents or images)")
    return TensorData(
        x.float().contiguous(), labels, f"{name} ({kind}, {x.shape[0]} samples)", encoder
    )


def _pick(arrays: dict[str, object], name: str) -> tuple[str, object, object]:
    kinds = [k for k in ("latents", "images") if k in arrays]
    if len(kinds) != 1:
        raise L2CError(
            f"{name}: expected exactly one of 'latents' or 'images' plus 'labels', found {sorted(arrays)}"
        )
    if "labels" not in arrays:
        raise L2CError(f"{name}: no 'labels' array (found {sorted(arrays)})")
    return kinds[0], arrays[kinds[0]], arrays["labels"]


def load_tensors(
    path: str | os.PathLike[str], spec: ModelSpec, *, vae: VaeEncoder | None = None
) -> TensorData:
    """Read ``.safetensors`` / ``.npz`` (keys latents|images + labels) or ``X.npy`` + ``X.labels.npy``."""
    p = input_file(path, "data file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            kind, x, y = _pick(load_file(str(p)), p.name)
        elif suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                kind, x, y = _pick({k: z[k] for k in z.files}, p.name)
        elif suffix == ".npy":
            labels_path = p.with_name(p.stem + ".labels.npy")
            if not labels_path.is_file():
                raise L2CError(f"{p.name}: a .npy data file needs its labels in {labels_path.name}")
            x = np.load(p, allow_pickle=False)
            y = np.load(labels_path, allow_pickle=False)
            # Latent arrays are floating point; images are usually uint8, or float for pixel models.
            kind = "latents" if x.dtype.kind == "f" and not spec.pixel_space else "images"
        else:
            raise L2CError(
                f"{p.name}: unknown data file type (use {', '.join(TENSOR_SUFFIXES)} or an image folder)"
            )
    except L2CError:
        raise
    except Exception as exc:  # safetensors/numpy raise many types for corrupt files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2CError(f"{p.name}: cannot read data file ({first})") from None
    x_t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    y_t = torch.as_tensor(np.asarray(y)) if not isinstance(y, torch.Tensor) else y
    return tensor_data(x_t, y_t, spec, kind=kind, name=p.name, vae=vae)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------


def center_crop(image, size: int):
    """ADM's center crop: halve with a box filter while possible, bicubic-resize, crop the center."""
    from PIL import Image

    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]  # (size, size, 3) uint8


class ImageFolderData:
    """``root/<class>/…/image`` files; classes in sorted folder order are labels 0..K−1."""

    def __init__(
        self, root: str | os.PathLike[str], spec: ModelSpec, *, vae: VaeEncoder | None = None
    ) -> None:
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise L2CError(
                "reading image folders needs Pillow: pip install 'l2c-compile[images]'"
            ) from None
        self.root = Path(root)
        if not self.root.is_dir():
            raise L2CError(f"image folder not found: {self.root}")
        classes = sorted(
            d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )
        if not classes:
            raise L2CError(f"{self.root}: no class subfolders (expected root/<class>/<image>)")
        if len(classes) > spec.num_classes:
            raise L2CError(
                f"{self.root}: {len(classes)} class folders but {spec.name} has {spec.num_classes} classes"
            )
        files: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(classes):
            found = sorted(
                f
                for f in (self.root / name).rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
            )
            files += found
            labels += [label] * len(found)
        if not files:
            raise L2CError(
                f"{self.root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders"
            )
        self.files = files
        self.labels = torch.tensor(labels, dtype=torch.long)
        c, h, _ = spec.latent_shape
        if spec.pixel_space:
            if c != 3:
                raise L2CError(
                    f"{spec.name} takes {c}-channel inputs but image folders hold RGB images"
                )
            self.encoder: VaeEncoder | None = None
            self.size = h
        else:
            self.encoder = _check_vae(vae, spec, "an image folder")
            self.size = h * self.encoder.factor
        self.description = f"{self.root} ({len(files)} images, {len(classes)} classes)"

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                return center_crop(im.convert("RGB"), self.size)
        except OSError as exc:
            raise L2CError(f"cannot read image {self.files[i]}: {exc}") from None

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Load, crop, flip (p = 0.5), normalise to [-1, 1] and encode the images at ``indices``."""
        flips = torch.rand(len(indices), generator=generator) < 0.5
        arrays = [self._load(int(i)) for i in indices]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
        x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        x = x.float() / 127.5 - 1.0  # (B, 3, S, S)
        if self.encoder is not None:
            x = self.encoder(x, generator)  # (B, C, H, W)
        return x, self.labels[indices]


# ---------------------------------------------------------------------------------------------
# Data-free: x0 from the model itself
# ---------------------------------------------------------------------------------------------


SELF_CHUNK = 16  # samples per sampler run; fixed so the pool does not depend on the world size


def check_pool_size(size: object) -> None:
    """A data-free pool's size must be a positive integer (L2CError otherwise)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise L2CError(f"the data-free pool size must be a positive integer, got {size!r}")


def draw_self_data(
    model: nn.Module,
    plan,
    spec: ModelSpec,
    *,
    size: int,
    seed: int,
    progress: bool = False,
) -> TensorData:
    """A pool of ``size`` x0 drawn with the model's own uncached sampler (no CFG), seeded.

    Chunk i of the pool uses noise and labels from its own generator, so the pool is the same
    whatever the number of processes; under torch.distributed each rank draws every world-th
    chunk and the chunks are broadcast to all ranks.
    """
    from l2c_compile.compiler.reference import sample_uncached

    check_pool_size(size)
    device = next(model.parameters()).device
    c, h, w = spec.latent_shape
    pool = torch.empty(size, c, h, w)
    labels = torch.empty(size, dtype=torch.long)

    def draw(lo: int, hi: int, gen: torch.Generator) -> None:
        noise = torch.randn(hi - lo, c, h, w, generator=gen)
        y = torch.randint(0, spec.num_classes, (hi - lo,), generator=gen)
        x0 = sample_uncached(model, plan, noise.to(device), y.to(device), None)
        pool[lo:hi], labels[lo:hi] = x0.float().cpu(), y

    def share(lo: int, hi: int, src: int) -> None:
        _broadcast_chunk(pool, labels, lo, hi, src=src, device=device)

    draw_chunks(size, seed, draw, share, progress=progress)
    return TensorData(
        pool, labels, f"self ({size} samples from the {plan.sampler} sampler, seed {seed})"
    )


def draw_chunks(
    size: int,
    seed: int,
    draw: Callable[[int, int, torch.Generator], None],
    share: Callable[[int, int, int], None],
    *,
    progress: bool,
) -> None:
    """The data-free pool's chunk loop: rows ``lo:hi`` of chunk i (``SELF_CHUNK`` rows) are made by
    ``draw(lo, hi, generator)`` with the chunk's own seeded generator, so the pool does not depend
    on the number of processes; under torch.distributed each rank draws every world-th chunk and
    ``share(lo, hi, src)`` broadcasts each chunk from the rank that drew it. A progress bar on
    rank 0 when ``progress``."""
    n_chunks = math.ceil(size / SELF_CHUNK)
    rank, world = _dist_info()
    bar = _progress_bar(progress and rank == 0, "drawing x0 from the model", n_chunks)
    try:
        for i in range(n_chunks):
            lo, hi = i * SELF_CHUNK, min(size, (i + 1) * SELF_CHUNK)
            if i % world == rank:
                draw(lo, hi, torch.Generator().manual_seed(_chunk_seed(seed, i)))
            if world > 1:
                share(lo, hi, i % world)
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()


def _chunk_seed(seed: int, chunk: int) -> int:
    return int(np.random.SeedSequence([seed, chunk, 0, 3]).generate_state(1, dtype=np.uint64)[0])


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _broadcast_chunk(
    pool: torch.Tensor, labels: torch.Tensor, lo: int, hi: int, *, src: int, device: torch.device
) -> None:
    import torch.distributed as dist

    # NCCL only moves device tensors; gloo takes CPU ones. Labels travel as float (exact < 2^24).
    buf = torch.cat([pool[lo:hi].flatten(1), labels[lo:hi, None].float()], dim=1).to(device)
    dist.broadcast(buf, src=src)
    buf = buf.cpu()
    pool[lo:hi] = buf[:, :-1].reshape(pool[lo:hi].shape)
    labels[lo:hi] = buf[:, -1].round().long()


def _progress_bar(enabled: bool, what: str, total: int, unit: str = "chunks"):
    if not enabled:
        return None
    from rich.progress import Progress

    from l2c_compile.progress import bar_columns

    bar = Progress(*bar_columns(unit))
    task = bar.add_task(what, total=total, unit=unit)
    bar.start()
    return bar, task


# ---------------------------------------------------------------------------------------------
# One entry point for the CLI
# ---------------------------------------------------------------------------------------------


@dataclass
class LabelData:
    """Labels only, for the trajectory objective, which samples from noise and reads no x0.

    ``batch`` gives zeros in x0's place (the objective takes only their shape); :func:`train`
    refuses this data for the step objective, whose target is built from x0.
    """

    labels: torch.Tensor  # (N,) int64
    sample_shape: tuple[int, int, int]  # (C, H, W) of x0
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(
        self, indices: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zeros (B, C, H, W) and labels (B,) for ``indices``."""
        return torch.zeros(len(indices), *self.sample_shape), self.labels[indices]


def self_labels(spec: ModelSpec, *, size: int, seed: int) -> LabelData:
    """``size`` labels drawn uniformly over the model's classes from ``seed``: data-free training
    with the trajectory objective needs no pool of samples (Raises L2CError on a bad size)."""
    check_pool_size(size)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, spec.num_classes, (size,), generator=gen)
    return LabelData(labels, tuple(spec.latent_shape), f"self ({size} labels, seed {seed}; no samples drawn)")


def open_data(
    source: str | os.PathLike[str],
    spec: ModelSpec,
    *,
    model: nn.Module | None = None,
    plan=None,
    vae: VaeEncoder | None = None,
    pool_size: int = 256,
    seed: int = 0,
    progress: bool = False,
    labels_only: bool = False,
) -> TrainData:
    """``"self"`` → :func:`draw_self_data` (``labels_only``, for the trajectory objective:
    :func:`self_labels`, no samples drawn); a folder → :class:`ImageFolderData`; a file →
    :func:`load_tensors`."""
    if str(source) == "self" and labels_only:
        return self_labels(spec, size=pool_size, seed=seed)
    if str(source) == "self":
        if model is None or plan is None:
            raise L2CError("data-free training ('self') needs the model and its sampler plan")
        return draw_self_data(model, plan, spec, size=pool_size, seed=seed, progress=progress)
    p = Path(source)
    if p.is_dir():
        return ImageFolderData(p, spec, vae=vae)
    if p.exists():  # a file; a fifo or device is refused by name there
        return load_tensors(p, spec, vae=vae)
    raise L2CError(f"data not found: {p} (give 'self', an image folder or a tensors file)")
