"""A model architecture by name: the family's class, its constructor arguments and sampling conventions.

A leaf module (it imports only the model families), so the registry and the Fashion-MNIST specs
can both build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.families import Shape, get_family
from l2c_compile.models.dit import DiT
from l2c_compile.models.uvit import UViT

FAMILIES: dict[str, type[nn.Module]] = {"dit": DiT, "uvit": UViT}  # the registry's classes


def family_shape(family: str) -> Shape:
    """The :class:`~l2c_compile.families.Shape` a registry family declares; L2CError if none."""
    shape = get_family(family).shape
    if shape is None:
        raise L2CError(f"family {family!r} declares no constructor shape: it is not a registry family")
    return shape


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: constructor kwargs and its sampling conventions."""

    name: str
    family: str  # "dit" | "uvit"
    kwargs: Mapping[str, Any]  # constructor arguments of the family's class
    latent_shape: tuple[int, int, int]  # (C, H, W) the network denoises
    num_classes: int  # real classes, excluding the null class
    noise_schedule: str  # "linear" (DiT) | "scaled_linear" (U-ViT)
    time_input: str  # "discrete" (DiT: integer timesteps) | "continuous" (U-ViT: t * 1000)
    default_sampler: str  # "ddim" | "dpm-solver-2"
    default_cfg_scale: float  # in the family's own convention (DiT 4.0, U-ViT 0.4)
    pixel_space: bool  # True: outputs are images (no VAE); False: VAE latents
    description: str
    checkpoint: str | None = None  # weights shipped with the package, loaded when none is given

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise L2CError(
                f"model {self.name!r}: unknown family {self.family!r} (expected {' or '.join(FAMILIES)})"
            )
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "latent_shape", tuple(self.latent_shape))

    def __hash__(self) -> int:
        return hash((self.name, self.family, tuple(sorted(self.kwargs.items()))))

    @property
    def shape(self) -> Shape:
        """How this family's constructor arguments state its size (its declaration's)."""
        return family_shape(self.family)

    @property
    def hidden(self) -> int:
        """Width of the residual stream."""
        return int(self.kwargs[self.shape.width])

    @property
    def heads(self) -> int:
        """Attention heads per block."""
        return int(self.kwargs["num_heads"])

    @property
    def patch(self) -> int:
        """Patch side in latent pixels."""
        return int(self.kwargs["patch_size"])

    @property
    def tokens(self) -> int:
        """Sequence length the blocks see (U-ViT adds a label and a time token)."""
        side = self.latent_shape[1] // self.patch
        return side * side + self.shape.extra_tokens(int(self.kwargs.get("num_classes", 0)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (for manifests and ``--format json``)."""
        return {
            "name": self.name,
            "family": self.family,
            "kwargs": dict(self.kwargs),
            "latent_shape": list(self.latent_shape),
            "num_classes": self.num_classes,
            "noise_schedule": self.noise_schedule,
            "time_input": self.time_input,
            "default_sampler": self.default_sampler,
            "default_cfg_scale": self.default_cfg_scale,
            "pixel_space": self.pixel_space,
            "description": self.description,
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
        }
