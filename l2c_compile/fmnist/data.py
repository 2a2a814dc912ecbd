"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, as 32×32 images in [-1, 1].

The package ships the original IDX files (gzip-compressed) under
``/usr/share/datasets/fashion-mnist/``. They are read with numpy only; 28×28 images are padded
with background (-1) by two pixels on every side to 32×32, so a patch-2 model sees 16×16 = 256
tokens, the sequence length of DiT-XL/2 at 256 px. ``L2C_FMNIST_DIR`` overrides the folder.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from l2c_compile.errors import L2CError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
IMAGE_SIZE = 32
PAD = (IMAGE_SIZE - 28) // 2
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPE = {0x08: np.uint8}  # the only element type Fashion-MNIST uses


def data_dir() -> Path:
    """The folder holding the IDX files (``$L2C_FMNIST_DIR`` or the Debian package's)."""
    return Path(os.environ.get("L2C_FMNIST_DIR", DEFAULT_DIR))


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise L2CError(
        f"Fashion-MNIST file {stem}(.gz) not found in {folder}; "
        f"install it with `apt-get install {DEBIAN_PACKAGE}` or set L2C_FMNIST_DIR"
    )


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``) into a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise L2CError(f"cannot read IDX file {path}: {exc}") from None
    # Header: two zero bytes, the element type, the number of dimensions, then big-endian sizes.
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPE:
        raise L2CError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if len(data) - header != int(np.prod(shape)):
        raise L2CError(
            f"{path} is truncated: header says {shape}, file has {len(data) - header} values"
        )
    return np.frombuffer(data, dtype=_IDX_DTYPE[data[2]], offset=header).reshape(shape)


def load_split(
    split: str = "train", folder: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 images (N, 28, 28) and int64 labels (N,) of ``split`` ("train" or "test")."""
    if split not in _FILES:
        raise L2CError(f"unknown Fashion-MNIST split {split!r}; choose train or test")
    root = Path(folder) if folder is not None else data_dir()
    images = read_idx(_find(root, _FILES[split][0]))
    labels = read_idx(_find(root, _FILES[split][1])).astype(np.int64)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise L2CError(
            f"Fashion-MNIST {split} files in {root} disagree: {images.shape} images, {labels.shape} labels"
        )
    return images, labels


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32) in [-1, 1], padded with background (-1)."""
    x = torch.from_numpy(images.astype(np.float32)).div_(127.5).sub_(1.0)  # (N, 28, 28)
    x = torch.nn.functional.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)  # (N, 32, 32)
    return x.unsqueeze(1)  # (N, 1, 32, 32)


def load_tensors(
    split: str = "train", folder: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 32, 32) float32 in [-1, 1] and labels (N,) int64 of ``split``."""
    images, labels = load_split(split, folder)
    return to_model_range(images), torch.from_numpy(labels)


def available(folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether both splits can be found (tests skip when not)."""
    root = Path(folder) if folder is not None else data_dir()
    stems = [s for pair in _FILES.values() for s in pair]
    return all((root / f"{s}.gz").is_file() or (root / s).is_file() for s in stems)
