"""The compiled sampler's call contract: what ``sampler(noise, labels, cfg_scale)`` accepts.

Every input that does not fit is one :class:`~l2c_compile.errors.L2CError` naming the valid range
or type, raised before any model call: a label out of range (the null class included: ask for
unconditional samples with ``labels=None``), float or boolean labels, a list instead of a tensor,
a shape or device mismatch, a non-finite guidance scale, and weights moved to another dtype after
compiling (which would otherwise crash deep inside a step graph).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.families import latent_shape
from l2c_compile.families import model_dtype as computes_in

__all__ = ["MAX_CFG_SCALE", "check_call", "check_finite_output", "check_scale", "check_weights", "label_rows"]

# Guidance scales in use lie within about 0–20 (DiT-XL/2 samples with 4, U-ViT-H/2 with 0.4); far
# beyond, s·(c − u) overflows float32 (2**64 gave non-finite samples, 1e308 a RuntimeError).
MAX_CFG_SCALE = 1e4


def check_call(
    model: nn.Module,
    model_dtype: torch.dtype,
    noise: object,
    labels: object,
    name: str,
    cfg: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a sampler call's ``noise`` and ``labels``; return them ready to run.

    ``noise``: floating-point ``(N, C, H, W)`` (``(N, *latent_shape)``: a video model's
    ``(N, C, F, H, W)``) on the weights' device, returned as float32.
    ``labels``: an integer ``(N,)`` tensor of real classes, or None (unconditional: every row
    gets the null class). Raises :class:`L2CError` naming the valid range or type, and when the
    weights' dtype is no longer ``model_dtype`` (moved after compiling). A text-conditioned model
    (one with ``example_condition``, e.g. PixArt) takes its condition tensor instead of labels, of
    the shape that method gives for ``cfg`` (PixArt: ``(N, 2, L, D + 1)`` with guidance, else
    ``(N, L, D + 1)``), floating point; it is returned in ``model_dtype``.
    """
    weight = next(model.parameters())
    if computes_in(model) != model_dtype:  # the weights' dtype, less the modules kept in float32
        want = str(model_dtype).removeprefix("torch.")
        have = str(computes_in(model)).removeprefix("torch.")
        raise L2CError(
            f"this sampler was compiled for {want} weights but they are now {have} (moved "
            f"after compiling); move them back with .to(torch.{want}) or compile a {have} sampler"
        )
    expected = latent_shape(model)  # (C, H, W), or (C, F, H, W)
    if not isinstance(noise, torch.Tensor):
        raise L2CError(
            f"noise must be a torch.Tensor of shape (N, {', '.join(map(str, expected))}), "
            f"got {type(noise).__name__}"
        )
    if noise.dim() != 1 + len(expected) or tuple(noise.shape[1:]) != expected or noise.shape[0] == 0:
        raise L2CError(
            f"noise must have shape (N, {', '.join(map(str, expected))}) with N >= 1, "
            f"got {tuple(noise.shape)}"
        )
    if not noise.is_floating_point():
        raise L2CError(f"noise must be a floating-point tensor, got {noise.dtype}")
    if noise.device != weight.device:
        raise L2CError(
            f"noise is on {noise.device} but the sampler's weights are on {weight.device}; "
            "move one of them"
        )
    n = noise.shape[0]
    if hasattr(model, "example_condition"):
        return noise.float(), _check_condition(model, model_dtype, labels, n, cfg, noise.device)
    real = int(model.null_class)  # real classes are 0 .. null_class-1
    if labels is None:
        if label_rows(model) <= real:
            raise L2CError(
                f"{name} has no null class, so it cannot sample unconditionally: pass labels"
            )
        labels = torch.full((n,), real, dtype=torch.long, device=noise.device)
    elif not isinstance(labels, torch.Tensor):
        raise L2CError(
            f"labels must be a torch.Tensor of integer class ids, shape ({n},), got "
            f"{type(labels).__name__} (use torch.tensor(labels))"
        )
    else:
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise L2CError(f"labels must be integer class ids (torch.long), got {labels.dtype}")
        if labels.device not in (noise.device, torch.device("cpu")):
            raise L2CError(
                f"labels are on {labels.device}; pass them on the noise's device ({noise.device}) or the CPU"
            )
        if labels.shape != (n,):
            raise L2CError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= real:
            bad = lo if lo < 0 else hi
            null = " (the null class: pass labels=None for unconditional samples)"
            what = null if bad == real else ""
            raise L2CError(
                f"label {bad} is out of range: this model has classes 0..{real - 1}{what}"
            )
        labels = labels.to(device=noise.device, dtype=torch.long)
    if noise.dtype != torch.float32:
        noise = noise.float()  # the sampler state is float32 (runtime.py's docstring)
    return noise, labels


def _check_condition(
    model: nn.Module, model_dtype: torch.dtype, y: object, n: int, cfg: bool, device: torch.device
) -> torch.Tensor:
    """A text-conditioned model's condition tensor, checked (see :func:`check_call`)."""
    want = tuple(model.example_condition(n, cfg, "meta").shape)
    if not isinstance(y, torch.Tensor):
        raise L2CError(
            f"this sampler is conditioned on a prompt: pass its condition tensor of shape {want}, "
            f"got {type(y).__name__}"
        )
    if not y.is_floating_point():
        raise L2CError(f"the prompt condition must be a floating-point tensor, got {y.dtype}")
    if tuple(y.shape) != want:
        raise L2CError(f"the prompt condition must have shape {want}, got {tuple(y.shape)}")
    if y.device != device:
        raise L2CError(
            f"the prompt condition is on {y.device} but the noise is on {device}; move one of them"
        )
    return y.to(model_dtype)


def label_rows(model: nn.Module) -> int:
    """How many label ids the model embeds (its real classes, plus the null class if it has one)."""
    for path in ("y_embedder.embedding_table", "label_emb"):  # DiT, U-ViT
        emb = model
        for part in path.split("."):
            emb = getattr(emb, part, None)
        if isinstance(emb, nn.Embedding):
            return int(emb.num_embeddings)
    return int(model.null_class) + 1


def check_scale(value: float | torch.Tensor) -> float | torch.Tensor:
    """The guidance scale if it is one finite number (or a one-element tensor); else L2CError."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            raise L2CError(
                "cfg_scale must be a number or a one-element real tensor, got "
                f"{value.dtype} of shape {tuple(value.shape)}"
            )
        ok = bool(torch.isfinite(value.detach().float()).all())
    elif isinstance(value, int | float) and not isinstance(value, bool):
        ok = math.isfinite(value)
    else:
        raise L2CError(f"cfg_scale must be a number, got {type(value).__name__}")
    if not ok:
        raise L2CError(f"cfg_scale must be finite, got {value}")
    if abs(float(value)) > MAX_CFG_SCALE:
        raise L2CError(
            f"cfg_scale {float(value):g} is out of range: it must lie within ±{MAX_CFG_SCALE:g} (guidance "
            "scales in use are 0–20; larger ones overflow the samples)"
        )
    return value


def check_weights(model: nn.Module) -> None:
    """L2CError naming the first parameter or buffer that holds a NaN or an infinity.

    Such weights compile and sample without an error, into all-black pictures; a checkpoint
    broken that way is refused before compiling instead.
    """
    for kind, tensors in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in tensors:
            if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta":
                continue
            finite = torch.isfinite(t.detach())
            if not bool(finite.all()):
                bad = t.detach()[~finite]
                nans = int(torch.isnan(bad).sum())
                raise L2CError(
                    f"{kind} {name} is not finite ({nans} NaN and {bad.numel() - nans} infinite of "
                    f"{t.numel()} values); refusing to compile these weights"
                )


def check_finite_output(x: torch.Tensor, consequence: str) -> None:
    """L2CError when a sampler's output holds a NaN or an infinity (``consequence`` ends the line)."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        raise L2CError(
            f"the output is not finite ({int((~finite).sum())} of {x.numel()} values are NaN or "
            f"infinite); {consequence}"
        )
