"""Where text-conditioned router training (PixArt, SD3, FLUX.1, Wan) gets its conditions and its x0:
prompts, data-free.

The conditions come from a prompts file, either

* a text file, one prompt per line (blank lines skipped), encoded by the pipeline's own tokenizers
  and text encoders (``pipe.encode_prompt``, through the adapter's ``prompt_condition``); the empty
  prompt, encoded the same way, is the null condition that label dropout puts in (the pipeline's
  default negative prompt), or
* a ``.safetensors`` file of precomputed tensors under the pipeline's own names (the adapter's
  ``condition_keys``): PixArt's ``prompt_embeds`` (N, L, D) with ``prompt_attention_mask`` (N, L),
  SD3's and FLUX's ``prompt_embeds`` (N, L, D) with ``pooled_prompt_embeds`` (N, P) (FLUX.1-dev's
  condition embeds the pipeline's default guidance scale, 3.5), Wan's ``prompt_embeds`` (N, L, D)
  alone; optionally the negative pair (``negative_prompt_embeds`` (1, L, D) with
  ``negative_prompt_attention_mask`` / ``negative_pooled_prompt_embeds``; Wan's alone) as the null
  condition.

x0 is drawn from the model itself (:func:`draw_prompt_data`): sample i is the uncached sampler's
output for prompt ``i mod N``, with classifier-free guidance against the null condition when there
is one and the model's default scale is above 1 (not for FLUX.1, which samples unguided by default:
its null condition serves label dropout only). The result is a
:class:`~l2c_compile.router.data.TensorData` whose "labels" are the packed conditions (PixArt
(N, L, D + 1), SD3 and FLUX (N, L + 1, W), Wan (N, L, D)), so the training loop runs unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.families import latent_shape
from l2c_compile.inputs import input_file
from l2c_compile.router.data import TensorData, check_pool_size, draw_chunks


def read_prompts(path: str | os.PathLike[str]) -> list[str]:
    """The prompts of a text file, one per line (blank lines skipped); L2CError when it has none
    or cannot be read as UTF-8 text."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise L2CError(f"cannot read prompts from {p}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise L2CError(f"{p} holds no prompt (one prompt per line)")
    return prompts


def load_conditions(
    path: str | os.PathLike[str], model: nn.Module, pipe: Any | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(conditions (N, …), null condition (…) or None, description)`` from a prompts file (see
    the module docstring), packed as ``model`` (a text-to-image adapter) packs them. ``pipe``: the
    pipeline whose text encoders encode a text file (L2CError without one). L2CError for a
    missing key or a shape that does not fit ``model`` (its ``example_condition``)."""
    (prompt_key, extra_key), (negative_key, negative_extra_key) = model.condition_keys
    p = input_file(path, "prompts file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p))
        except (SafetensorError, OSError) as exc:
            raise L2CError(f"{p.name}: cannot read safetensors ({exc})") from None
        missing = [k for k in (prompt_key, extra_key) if k is not None and k not in tensors]
        if missing:
            raise L2CError(
                f"{p.name} lacks {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'nothing'})"
            )
        conds = model.pack_condition(tensors[prompt_key].float(), *([tensors[extra_key]] if extra_key else []))
        null = None
        if negative_key in tensors:
            if negative_extra_key is not None and negative_extra_key not in tensors:
                raise L2CError(f"{p.name}: {negative_key} needs {negative_extra_key}")
            extra = [tensors[negative_extra_key]] if negative_extra_key else []
            null = model.pack_condition(tensors[negative_key].float(), *extra)[0]
        description = f"{conds.shape[0]} prompt embeddings from {p.name}"
    else:
        prompts = read_prompts(p)
        if pipe is None:
            raise L2CError(
                "a text prompts file needs the pipeline's text encoder: pass --diffusers DIR with a "
                "text-to-image pipeline folder (or precomputed prompt_embeds in a .safetensors file)"
            )
        y = model.prompt_condition(pipe, prompts, cfg=True)  # (N, 2, …): prompt, empty prompt
        conds, null = y[:, 0].float().cpu(), y[0, 1].float().cpu()
        description = f"{len(prompts)} prompts from {p.name}"
    want = tuple(model.example_condition(1, False, "cpu").shape[2:])  # the channels of one token
    if tuple(conds.shape[2:]) != want:
        raise L2CError(
            f"{p.name}: the packed prompt embeddings have {conds.shape[-1]} channels per token, the model "
            f"takes {want[-1]}"
        )
    if null is not None and null.shape != conds.shape[1:]:
        raise L2CError(
            f"{p.name}: the negative prompt's shape {tuple(null.shape)} differs from the prompts' "
            f"{tuple(conds.shape[1:])}"
        )
    return conds, null, description


@torch.no_grad()
def draw_prompt_data(
    model: nn.Module,
    plan,
    conds: torch.Tensor,
    null: torch.Tensor | None,
    *,
    size: int,
    seed: int,
    cfg_scale: float,
    description: str,
    progress: bool = False,
) -> TensorData:
    """A pool of ``size`` x0 drawn with the model's own uncached sampler, sample i for prompt
    ``i mod N``, guided against ``null`` at ``cfg_scale`` (unguided without a null condition).

    Seeded per chunk like :func:`~l2c_compile.router.data.draw_self_data`, so the pool does not
    depend on the number of processes; under torch.distributed each rank draws every world-th
    chunk and the chunks are broadcast to all ranks.
    """
    from l2c_compile.compiler.reference import sample_uncached

    check_pool_size(size)
    device = next(model.parameters()).device
    shape = latent_shape(model)  # (C, *spatial)
    labels = conds[torch.arange(size) % conds.shape[0]]  # (size, L, D + 1)
    pool = torch.empty(size, *shape)

    def draw(lo: int, hi: int, gen: torch.Generator) -> None:
        noise = torch.randn(hi - lo, *shape, generator=gen)
        y, scale = labels[lo:hi], None
        if null is not None:
            y, scale = torch.stack([y, null.expand_as(y)], dim=1), cfg_scale  # (b, 2, L, D + 1)
        pool[lo:hi] = sample_uncached(model, plan, noise.to(device), y.to(device), scale).float().cpu()

    def share(lo: int, hi: int, src: int) -> None:  # the conditions are the same on every rank
        import torch.distributed as dist

        buf = pool[lo:hi].to(device)
        dist.broadcast(buf, src=src)
        pool[lo:hi] = buf.cpu()

    draw_chunks(size, seed, draw, share, progress=progress)
    return TensorData(
        pool,
        labels,
        f"self ({size} samples from the {plan.sampler} sampler, seed {seed}; {description})",
    )
