"""What every text-conditioned adapter shares: :class:`PromptAdapter`.

PixArt, SD3, FLUX.1 and Wan take a prompt as one condition tensor ``y`` (N, L, W) (each adapter
packs its own rows: PixArt's mask column, SD3's and FLUX's pooled row, Wan's embeddings alone);
with CFG the prompt and the negative prompt are stacked, (N, 2, L, W), prompt first. What follows
from that is the same for all of them and is written here once: splitting a CFG condition, the
pipelines' ``u + s · (c − u)`` on the whole output, and router training's CFG dropout to the
encoded empty prompt. An adapter whose output holds more than the prediction (PixArt's learned σ)
overrides :meth:`~PromptAdapter.eps` and :meth:`~PromptAdapter.guide`.
"""

from __future__ import annotations

import torch
from torch import nn

from l2c_compile.errors import L2CError


class PromptAdapter(nn.Module):
    """Base of the text-conditioned adapters (see the module docstring)."""

    null_condition: torch.Tensor | None = None  # (L, W): the empty prompt, for training's dropout

    def cfg_conditions(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, negative prompt), each (N, L, W), of a CFG condition (N, 2, L, W)."""
        return y[:, 0], y[:, 1]

    def eps(self, out: torch.Tensor) -> torch.Tensor:
        """The prediction in a raw output: the whole output (the velocity of a flow model)."""
        return out

    def guide(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
        """The pipelines' CFG ``u + s · (c − u)``, shaped as the output."""
        return uncond + scale * (cond - uncond)

    def set_null_condition(self, null: torch.Tensor | None) -> None:
        """The condition CFG dropout puts in during router training (the encoded empty prompt,
        (L, W)); None: no dropout possible."""
        self.null_condition = None if null is None else null.detach().clone()

    def drop_labels(self, y: torch.Tensor, drop_mask: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Training-time CFG dropout: rows of ``y`` (N, L, W) in ``drop_mask`` (N,) bool (None:
        drawn with probability 0.1, the pipelines' caption dropout) become the null condition.
        L2CError without one."""
        if self.null_condition is None:
            raise L2CError("label dropout needs the empty prompt's condition (a negative prompt), which was not given")
        if drop_mask is None:
            drop_mask = torch.rand(y.shape[0], generator=generator) < 0.1
        null = self.null_condition.to(y.device, y.dtype).expand_as(y)
        return torch.where(drop_mask.to(y.device)[:, None, None], null, y)
