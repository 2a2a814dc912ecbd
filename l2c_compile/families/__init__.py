"""Model families, each one declaration: block groups, sublayer kinds, recipe, θ, conventions.

``base.py`` holds the record (:class:`Family`) and the registry; ``builtin.py`` the families that
ship (DiT, U-ViT, diffusers' DiT, PixArt, SD3, FLUX.1, Wan 2.1); ``protocol.py`` the
:class:`Denoiser` protocol a model or adapter follows, and what the compiler reads through it (the
shape of ``x``: :func:`latent_shape`; its dtype: :func:`model_dtype`). A new family is one
:func:`register_family` call plus its model (or adapter).
"""

from l2c_compile.families.base import (
    FAMILIES,
    BlockGroup,
    Family,
    FamilyError,
    KindDecl,
    Recipe,
    Sampling,
    Shape,
    family_for_diffusers,
    family_of,
    get_family,
    recipes,
    register_family,
    thresholds,
)
from l2c_compile.families.builtin import DIFFUSERS_DIT, DIT, PIXART, UVIT
from l2c_compile.families.protocol import Denoiser, fp32_kept, kept_dtype, latent_shape, model_dtype

__all__ = [
    "DIFFUSERS_DIT",
    "DIT",
    "FAMILIES",
    "PIXART",
    "UVIT",
    "BlockGroup",
    "Denoiser",
    "Family",
    "FamilyError",
    "KindDecl",
    "Recipe",
    "Sampling",
    "Shape",
    "family_for_diffusers",
    "family_of",
    "fp32_kept",
    "get_family",
    "kept_dtype",
    "latent_shape",
    "model_dtype",
    "recipes",
    "register_family",
    "thresholds",
]
