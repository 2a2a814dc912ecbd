"""What one training iteration computes, for one shard: the cache call, its warm-up, the loss.

For a cache call m (router row r), the cache it reads is written by the solver step holding call
m−1. :func:`cache_targets` finds that step for every cache call of a plan; :func:`shard_loss`
noises x0 to the step's start, runs its calls up to m−1 with full compute while recording
(no grad), forms call m's input with the plan's own combinations, and compares the full-compute
teacher with the router-blended student (spec §3). :class:`RouterLogits` holds the logits.

:func:`trajectory_loss` is the other objective (``objective="trajectory"``), after HarmoniCa
(Huang et al. 2024, arXiv 2410.01723): the student samples the whole plan from noise with every
cache call blended, so each cache call reads what the student's own earlier calls left (their
Step-Wise Denoising Training), and the loss is the distance of its final sample from the
uncached sampler's on the same noise: the image error itself, which HarmoniCa's Image Error
Proxy-Guided Objective approximates with a proxy; on a model small enough to backpropagate
through every call, no proxy is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from l2c_compile.compiler.guidance import GuidedDenoiser, timestep_vector
from l2c_compile.compiler.reference import CacheState
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, model_dtype
from l2c_compile.samplers.base import (
    Combination,
    ModelCall,
    SamplerPlan,
    SolverStep,
    execute_plan,
)


@dataclass(frozen=True)
class CacheTarget:
    """A trainable cache call and the solver step that fills the cache it reads."""

    call: ModelCall  # the cache call m
    step: SolverStep  # the solver step holding call m−1
    warm: tuple[ModelCall, ...]  # that step's calls up to m−1 (full compute, recording)
    crosses_step: bool  # m is the first call of the next step: apply the step update first
    # (α, σ) of the state at the start of ``step``: x = α·x0 + σ·ε (VP: α² + σ² = 1; flow: α = 1 − σ)
    noise_level: tuple[float, float]
    update: Combination | None = None  # the update to cross with (None: ``step.update``)

    @property
    def row(self) -> int:
        """The router row the cache call reads."""
        return int(self.call.router_index)  # type: ignore[arg-type]


def cache_targets(plan: SamplerPlan) -> tuple[CacheTarget, ...]:
    """Every cache call of ``plan`` with its warm-up, in sampling order."""
    owner: dict[int, SolverStep] = {c.index: s for s in plan.steps for c in s.calls}
    targets = []
    for call in plan.calls:
        if call.role != "cache":
            continue
        if call.index == 0 or call.router_index is None:
            raise L2CError(
                f"{plan.sampler} plan: cache call {call.index} has no earlier call to fill its cache"
            )
        step = owner[call.index - 1]
        warm = tuple(c for c in step.calls if c.index < call.index)
        level = plan.noise_level(step.calls[0])
        crosses = owner[call.index] is not step
        update = step.update
        first = step.calls[0].index
        if crosses and any(j < first for j, _ in update.eps):
            # A multistep update reads an earlier step the warm-up does not run: restart there.
            if step.restart is None:
                raise L2CError(
                    f"{plan.sampler} plan: the step before cache call {call.index} reads earlier "
                    "steps and has no restart update; cannot train it"
                )
            update = step.restart
        targets.append(CacheTarget(call, step, warm, crosses, level, update))
    if not targets:
        raise L2CError(
            f"the {plan.sampler} plan with {plan.nfe} NFE has no cache steps: nothing to train"
        )
    rows = [t.row for t in targets]
    if len(set(rows)) != len(rows):
        raise L2CError(
            f"{plan.sampler} plan: several cache calls share a router row; cannot train it"
        )
    return tuple(targets)


# ---------------------------------------------------------------------------------------------
# The trainable logits
# ---------------------------------------------------------------------------------------------


class RouterLogits(nn.Module):
    """The router table; only the trained rows are parameters (one each, like the official code)."""

    def __init__(self, init: torch.Tensor, rows: tuple[int, ...]) -> None:
        super().__init__()
        self.table = init.detach().clone()  # (nfe, K·depth): untrained rows stay as initialised
        self.rows = nn.ParameterDict({str(r): nn.Parameter(init[r].detach().clone()) for r in rows})

    def forward(self, rows: list[int]) -> tuple[torch.Tensor, ...]:
        """Scores sigmoid(logits) of ``rows``, each (K·depth,), K = sublayer kinds per block."""
        return tuple(torch.sigmoid(self.rows[str(r)]) for r in rows)

    def logits(self) -> torch.Tensor:
        """The full table (nfe, K·depth) with the current trained rows, detached, on the CPU."""
        out = self.table.clone()
        for r, p in self.rows.items():
            out[int(r)] = p.detach().cpu()
        return out

    @torch.no_grad()
    def clamp_(self, bound: float) -> None:
        """Clamp every trained logit to [−bound, bound]."""
        for p in self.rows.values():
            p.clamp_(-bound, bound)


def initial_logits(nfe: int, depth: int, seed: int, kinds: int = 2) -> torch.Tensor:
    """Standard-normal logits ``(nfe, kinds·depth)`` from the seed, like the official ``Router``
    init (all rows); ``kinds``: sublayer kinds per block (2 for DiT / U-ViT, 3 for PixArt)."""
    return torch.randn(nfe, kinds * depth, generator=torch.Generator().manual_seed(seed))


def mixing_weights(scores: torch.Tensor, ste_threshold: float | None) -> torch.Tensor:
    """Fresh-compute weights w: the scores, or the STE hard mask (forward 1[σ > thr], grad identity)."""
    if ste_threshold is None:
        return scores
    hard = (scores > ste_threshold).to(scores.dtype)
    return hard + scores - scores.detach()


# ---------------------------------------------------------------------------------------------
# One shard of one iteration
# ---------------------------------------------------------------------------------------------


def _model_call(
    model: nn.Module, call: ModelCall, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    dtype = model_dtype(model)
    t = torch.full((x.shape[0],), float(call.timestep), dtype=torch.float32, device=x.device)
    return model(x.to(dtype), t, y)  # (B, C_out, H, W) raw output, all channels


def shard_loss(
    model: nn.Module,
    state: CacheState,
    target: CacheTarget,
    x0: torch.Tensor,
    noise: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    distance: str,
    mode: str,
) -> torch.Tensor:
    """distance(teacher, student) at ``target``'s cache call; ``weights``: (width,) fresh weights
    in router entry order (the family layout's ``sublayer_keys()``: block by block, each block's kinds; for
    K kinds in every block, entry ``K·i + k`` is kind ``k`` of block ``i``)."""
    alpha, sigma = target.noise_level
    x = alpha * x0 + sigma * noise  # (B, C, H, W) state at the step start
    with torch.no_grad():
        state.clear()
        eps: dict[int, torch.Tensor] = {}
        for call in target.warm:
            state.set_call(record=True)
            x_in = call.input.apply(x, eps)  # (B, C, H, W)
            out = _model_call(model, call, x_in, labels)
            eps[call.index] = model.eps(out).to(x.dtype)  # (B, C, H, W)
            if call.output is not None:  # what the update reads (DPM-Solver++: the x0 prediction)
                eps[call.index] = call.output.apply(x_in, eps)
        if target.crosses_step:
            x, eps = (target.update or target.step.update).apply(x, eps), {}
        x_m = target.call.input.apply(x, eps)  # (B, C, H, W) input of the cache call
        state.set_call(record=False)
        teacher = _model_call(model, target.call, x_m, labels)  # (B, C_out, H, W)
    state.set_call(record=False)
    state.mode = mode
    w = weights.to(teacher.dtype)
    keys = family_of(model).layout(model).sublayer_keys()  # router entry order
    state.weights = {key: w[j] for j, key in enumerate(keys)}
    student = _model_call(model, target.call, x_m, labels)  # (B, C_out, H, W)
    state.weights = None
    return _distance(student, teacher, distance)  # over (C_out, H, W)


def _distance(student: torch.Tensor, teacher: torch.Tensor, distance: str) -> torch.Tensor:
    """Mean over the batch of the per-sample mean (``"mean"``) or sum (``"sum"``) of squares."""
    sq = (student.float() - teacher.float()).pow(2).flatten(1)  # (B, C·H·W)
    per_sample = sq.mean(dim=1) if distance == "mean" else sq.sum(dim=1)  # (B,)
    return per_sample.mean()


def trajectory_loss(
    model: nn.Module,
    state: CacheState,
    plan: SamplerPlan,
    noise: torch.Tensor,
    labels: torch.Tensor,
    scores: dict[int, torch.Tensor],
    *,
    distance: str,
    mode: str,
    cfg_scale: float | None,
) -> torch.Tensor:
    """distance(uncached final sample, student final sample) from the same ``noise``.

    ``noise``: (B, C, H, W) initial state; ``labels``: (B,); ``scores``: router row → (width,)
    fresh weights w in router entry order, one for every cache call of ``plan``. The teacher runs
    every call with full compute (no grad); the student runs the same calls, blending every
    sublayer of a cache call as ``w·fresh + (1−w)·cached`` (``mode="drop"``: ``w·fresh``), where
    the cache holds what the student's own latest full call computed. ``cfg_scale`` (None: no
    CFG) guides both as sampling does. Returns a scalar with the graph through every call.
    """
    denoiser = GuidedDenoiser(model, cfg=cfg_scale is not None)
    scale = torch.tensor(1.0 if cfg_scale is None else cfg_scale, device=noise.device)
    dtype = model_dtype(model)
    keys = family_of(model).layout(model).sublayer_keys()  # router entry order
    state.mode = mode

    def run(student: bool) -> torch.Tensor:
        state.clear()

        def eps_fn(call: ModelCall, x_in: torch.Tensor) -> torch.Tensor:
            blend = student and call.role == "cache"
            state.set_call(record=not blend)
            if blend:
                w = scores[int(call.router_index)].to(dtype)  # type: ignore[arg-type]
                state.weights = {key: w[j] for j, key in enumerate(keys)}
            t = timestep_vector(call.timestep, x_in.shape[0], x_in.device)
            return denoiser(x_in.to(dtype), t, labels, scale).to(noise.dtype)

        out = execute_plan(plan, noise, eps_fn)  # (B, C, H, W)
        state.weights = None
        return out

    with torch.no_grad():
        teacher = run(student=False)
    return _distance(run(student=True), teacher, distance)
