"""What the compiler, the reference executor and router training need from a model: :class:`Denoiser`.

A model (ours in ``models/``) or an adapter around someone else's (``diffusers/``) is used as it
is; nothing here is a base class to inherit. The protocol only writes down the attributes and
methods the code reads, with their shapes, so a new family knows what its adapter must offer.
Where each is read: ``guidance.GuidedDenoiser`` (``eps``, ``guide``, ``null_class``,
``cfg_conditions``), ``guidance.example_condition`` and ``sampler_inputs`` (``example_condition``),
``compiler.compile`` (``transformer_blocks``), ``passes/trace.py`` (``l2c_capture``), the shape of
``x`` wherever a sampler's noise or a capture's example input is made (:func:`latent_shape`:
``latent_shape``, or ``in_channels`` and ``input_size``) and the dtype ``x`` and ``y`` go in as
(:func:`model_dtype`), ``router/train.py`` (``drop_labels``,
``null_condition``), the reference executor and the passes (the family declaration's module paths,
:mod:`l2c_compile.families`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from l2c_compile.errors import L2CError


@runtime_checkable
class Denoiser(Protocol):
    """A network the compiler can specialize: ``forward(x, t, y)`` → the raw output.

    Required:

    - ``forward(x, t, y)``: ``x`` (N, C, H, W) latents (or pixels; (N, C, F, H, W) for a video
      model, any ``(N, *latent_shape)``), ``t`` (N,) float32 model timesteps, ``y`` (N,) int64
      labels or the family's condition tensor → (N, C_out, H, W) (the same trailing dimensions as
      ``x``).
    - ``eps(out)``: the ε (or velocity) prediction (N, C, H, W) from a raw output (drops learned-σ
      channels where the model has them).
    - ``guide(cond, uncond, scale)``: the family's classifier-free guidance, (N, C, H, W) each →
      (N, C, H, W) (DiT: ``u + s·(c − u)``; U-ViT: ``c + s·(c − u)``).
    - ``transformer_blocks()``: the blocks in execution order (their number is the depth).
    - ``in_channels``: C of ``x``; ``input_size``: H = W of a square ``x`` (unless the model gives
      ``latent_shape``, below).
    - ``null_class``: the label row of the unconditional half (class-conditional models; a model
      with ``cfg_conditions`` needs none).

    Optional (read with ``getattr``/``hasattr``):

    - ``latent_shape``: ``(C, *spatial)`` of ``x`` where it is not ``(in_channels, input_size,
      input_size)``: a video model's ``(C, F, H, W)``, a non-square image's ``(C, H, W)``. Read
      through :func:`latent_shape`, never directly.
    - ``cfg_conditions(y)`` → ``(cond, uncond)``: the two halves of a guided batch for a model
      guided against a negative condition (PixArt) instead of a null class;
      ``example_condition(n, cfg, device)``: a condition to capture and shape-propagate with.
    - ``drop_labels(y, drop_mask=None, generator=None)``: router training's CFG label dropout
      (dropped rows become the null class); ``null_condition``: None when the model has no null row.
    - ``l2c_capture``: ``"fx"`` or ``"export"`` (default: fx first, then export).
    - ``model_name``: the registry name it was built as.
    - ``_keep_in_fp32_modules`` on a submodule (diffusers' Wan): the modules whose tensors stay in
      float32 when the model goes to a lower precision; the dtype ``x`` and ``y`` go in as is then
      :func:`model_dtype`'s, not the first parameter's.
    """

    in_channels: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def eps(self, out: torch.Tensor) -> torch.Tensor: ...

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor: ...

    def transformer_blocks(self) -> list[nn.Module]: ...


def latent_shape(model: nn.Module) -> tuple[int, ...]:
    """``(C, *spatial)`` of the ``x`` that ``model`` denoises: its ``latent_shape`` (Wan's video
    latents: ``(C, F, H, W)``), else ``(in_channels, input_size, input_size)``. A sampler's noise
    and a capture's example input are ``(N, *latent_shape(model))``. L2CError when the model
    gives neither."""
    shape = getattr(model, "latent_shape", None)
    if shape is not None:
        return tuple(int(v) for v in shape)
    if not hasattr(model, "in_channels") or not hasattr(model, "input_size"):
        raise L2CError(f"{type(model).__name__} states no latent shape: give it latent_shape (C, *spatial), "
                       "or in_channels and input_size")
    return int(model.in_channels), int(model.input_size), int(model.input_size)


def fp32_kept(model: nn.Module) -> dict[int, str]:
    """The parameters and buffers a diffusers model keeps in float32, ``{id(tensor): name}``
    (names under ``model``): those whose name under a module declaring ``_keep_in_fp32_modules``
    has one of its entries as a part, the rule ``from_pretrained(torch_dtype=…)`` loads with
    (diffusers' ``model_loading_utils``; Wan: its norms, time embedder, adaLN tables and rotary
    tables). Empty for a model without such modules."""
    kept: dict[int, str] = {}
    for prefix, module in model.named_modules():
        names = getattr(module, "_keep_in_fp32_modules", None)
        if not names:
            continue
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if any(k in name.split(".") for k in names):
                kept[id(t)] = f"{prefix}.{name}" if prefix else name
    return kept


def kept_dtype(dtype: torch.dtype, current: torch.dtype) -> torch.dtype:
    """The dtype a tensor kept in float32 (:func:`fp32_kept`) takes when its model goes to
    ``dtype``: never narrower than float32 nor than it is (``current``)."""
    return torch.promote_types(torch.promote_types(dtype, current), torch.float32)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype ``model`` computes in, which its inputs take: its first floating-point parameter
    outside the modules it keeps in float32 (:func:`fp32_kept`), as diffusers' ``ModelMixin.dtype``
    reads it; float32 for a model without floating-point parameters."""
    kept = fp32_kept(model)
    floating = [p for p in model.parameters() if p.is_floating_point()]
    for p in floating:
        if id(p) not in kept:
            return p.dtype
    return floating[0].dtype if floating else torch.float32
