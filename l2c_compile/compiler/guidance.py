"""One model call of a sampler: the guided ε prediction, with classifier-free guidance batched.

Both executors use this module: the reference executor calls it eagerly, the compiler traces it
with torch.fx. CFG stays batched (design decision): the conditional and unconditional rows go through
the network in one call as ``[x, x]`` with labels ``[y, null]``, and the model family's own
``guide`` combines them (DiT: ``u + s(c - u)`` on the first 3 channels; U-ViT: ``c + s(c - u)``).

Text-conditioned models (PixArt) take a condition tensor ``y`` instead of labels, and their
unconditional rows come from the caller (the negative prompt), not from a null class: such a
model defines ``cfg_conditions(y) -> (cond, uncond)`` and ``example_condition(n, device)``.
"""

from __future__ import annotations

import torch
from torch import nn


class GuidedDenoiser(nn.Module):
    """ε(x, t, y) of a DiT / U-ViT, with batched classifier-free guidance when ``cfg`` is set."""

    def __init__(self, model: nn.Module, cfg: bool, *, slice_halves: bool = False) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        # torch.export with a dynamic batch cannot prove that chunk(2) of 2N rows gives two halves;
        # slicing at N says the same thing in a form it can (the values are identical).
        self.slice_halves = slice_halves

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: torch.Tensor
    ) -> torch.Tensor:
        """x: (N, C, H, W); t: (N,) model timesteps; y: (N,) labels, or the model's condition
        tensor (see the module docstring); cfg_scale: scalar."""
        if not self.cfg:
            return self.model.eps(self.model(x, t, y))  # (N, C, H, W)
        xx = torch.cat([x, x], dim=0)  # (2N, C, H, W)
        tt = torch.cat([t, t], dim=0)  # (2N,)
        if hasattr(self.model, "cfg_conditions"):
            cond, uncond = self.model.cfg_conditions(y)  # (N, …) each: prompt and negative prompt
            yy = torch.cat([cond, uncond], dim=0)  # (2N, …)
        else:
            yy = torch.cat([y, torch.full_like(y, self.model.null_class)], dim=0)  # (2N,)
        out = self.model(xx, tt, yy)  # (2N, C_out, H, W)
        if self.slice_halves:
            n = x.shape[0]
            cond, uncond = out[:n], out[n:]
        else:
            cond, uncond = torch.chunk(out, 2, dim=0)
        return self.model.guide(cond, uncond, cfg_scale)  # (N, C, H, W)


def timestep_vector(value: float, n: int, device: torch.device | str) -> torch.Tensor:
    """The model timestep ``value`` as the (n,) float32 vector the networks take."""
    return torch.full((n,), float(value), dtype=torch.float32, device=device)


def example_condition(
    model: nn.Module, n: int, cfg: bool, device: torch.device | str
) -> torch.Tensor:
    """A condition ``y`` for ``n`` rows to capture or shape-propagate a step with: the model's own
    (``model.example_condition``) or ``(n,)`` zero labels."""
    if hasattr(model, "example_condition"):
        return model.example_condition(n, cfg, device)
    return torch.zeros(n, dtype=torch.long, device=device)
