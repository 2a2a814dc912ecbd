"""DPM-Solver-2 (singlestep, data prediction) as a SamplerPlan, as U-ViT samples with it.

The official call (spec §4.3) is ``DPM_Solver(model_fn, NoiseScheduleVP('discrete', betas),
predict_x0=True).sample(z, steps=nfe, eps=1e-3, T=1, order=2, method='singlestep',
skip_type='time_uniform')`` with ``solver_type='dpm_solver'`` and r1 = 0.5: K = nfe/2 outer
steps on ``linspace(1, 1e-3, K + 1)``; step k evaluates the model at s = s_k and at the midpoint
s1 with λ(s1) = λ(s) + r1·h, h = λ(t) − λ(s), then::

    x0(x, u)  = (x − σ_u ε(x, u)) / α_u                       (data prediction)
    x_s1      = σ_s1/σ_s · x − α_s1 φ11 · x0(x, s)             φ11 = expm1(−r1 h)
    x_t       = σ_t/σ_s · x − α_t φ1 · x0(x, s) − (0.5/r1) α_t φ1 · (x0(x_s1, s1) − x0(x, s))

Every term is linear in x and the ε outputs, so the plan stores the expanded coefficients,
computed in float64. The outer time grid alone is taken from a float32 ``torch.linspace`` exactly
as the official code builds it: the network then sees the same times, and the router keys
``round(1000 t)`` match the released checkpoints (float64 would give 500 instead of 501 at nfe 20).

Cadence ("shifted cache steps", paper App. B.1, spec §4.3): s_0 and every midpoint are full;
s_k for k ≥ 1 is a cache step reading router row k, so the finite difference
``x0(x_s1) − x0(x)`` never mixes a cached output into the midpoint. ``shifted=False`` is the
paper's unshifted ablation: every s_k is full and each midpoint s1_k is a cache step with row k.

Model timestep: ``"continuous"`` passes 1000·t (U-ViT's ``nnet(x, t · N)``); ``"discrete"``
passes DPM-Solver's discrete wrapper value ``1000 · max(t − 1/N, 0)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import Combination, ModelCall, Role, SamplerPlan, SolverStep
from l2c_compile.samplers.schedules import (
    NUM_TRAIN_STEPS,
    DiscreteVP,
    check_noise_schedule,
    check_time_input,
)

R1 = 0.5  # midpoint in λ; the official default
T_START = 1.0
T_END = 1.0 / NUM_TRAIN_STEPS  # sample_ldm_discrete.py passes eps = 1 / N


@dataclass(frozen=True)
class _Linear:
    """``x * state + Σ coef * eps[j]`` while the expansion is being built (float64)."""

    x: float
    eps: tuple[tuple[int, float], ...] = ()

    def __add__(self, other: _Linear) -> _Linear:
        coefs = dict(self.eps)
        for j, c in other.eps:
            coefs[j] = coefs.get(j, 0.0) + c
        return _Linear(self.x + other.x, tuple(sorted(coefs.items())))

    def __mul__(self, k: float) -> _Linear:
        return _Linear(self.x * k, tuple((j, c * k) for j, c in self.eps))

    def combination(self) -> Combination:
        """The frozen Combination, without terms whose coefficient is exactly zero."""
        return Combination(self.x, tuple((j, c) for j, c in self.eps if c != 0.0))


def _eps(j: int) -> _Linear:
    return _Linear(0.0, ((j, 1.0),))


def outer_times(k_steps: int) -> list[float]:
    """The K + 1 outer times ``linspace(1, 1e-3, K + 1)``, built in float32 like the official code."""
    grid = torch.linspace(T_START, T_END, k_steps + 1, dtype=torch.float32)
    return [float(v) for v in grid.tolist()]


def model_time(t: float, time_input: str) -> float:
    """The value the network receives at continuous time ``t``."""
    if time_input == "continuous":
        return t * NUM_TRAIN_STEPS
    return 1000.0 * max(t - 1.0 / NUM_TRAIN_STEPS, 0.0)


def dpm_roles(k: int, shifted: bool) -> tuple[tuple[Role, int | None], tuple[Role, int | None]]:
    """(role, router row) of the two calls of outer step ``k``: at s_k, then at the midpoint."""
    if shifted:
        first: tuple[Role, int | None] = ("full", None) if k == 0 else ("cache", k)
        return first, ("full", None)
    return ("full", None), ("cache", k)


def _check_nfe(nfe: int) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 2 or nfe % 2:
        raise L2CError(
            f"DPM-Solver-2 needs an even number of model calls >= 2 (2 per step), got {nfe!r}"
        )
    return nfe // 2


def dpm_solver2_plan(
    nfe: int,
    *,
    noise_schedule: str = "scaled_linear",
    time_input: str = "continuous",
    shifted: bool = True,
) -> SamplerPlan:
    """Singlestep DPM-Solver-2 (data prediction, r1 = 0.5, time-uniform) with ``nfe`` model calls."""
    k_steps = _check_nfe(nfe)
    if not isinstance(shifted, bool):
        raise L2CError(f"DPM-Solver-2 option shifted must be true or false, got {shifted!r}")
    vp = DiscreteVP(check_noise_schedule(noise_schedule))
    check_time_input(time_input)
    times = outer_times(k_steps)
    steps = []
    for k in range(k_steps):
        s, t = times[k], times[k + 1]
        lam_s, lam_t = float(vp.marginal_lambda(s)), float(vp.marginal_lambda(t))
        h = lam_t - lam_s
        s1 = float(vp.inverse_lambda(lam_s + R1 * h))
        alpha_s, alpha_s1, alpha_t = (float(vp.marginal_alpha(u)) for u in (s, s1, t))
        sigma_s, sigma_s1, sigma_t = (float(vp.marginal_std(u)) for u in (s, s1, t))
        phi_11, phi_1 = math.expm1(-R1 * h), math.expm1(-h)

        j_s, j_s1 = 2 * k, 2 * k + 1
        x = _Linear(1.0)
        x0_s = x * (1.0 / alpha_s) + _eps(j_s) * (-sigma_s / alpha_s)
        x_s1 = x * (sigma_s1 / sigma_s) + x0_s * (-alpha_s1 * phi_11)
        x0_s1 = x_s1 * (1.0 / alpha_s1) + _eps(j_s1) * (-sigma_s1 / alpha_s1)
        # x_t rearranged as −α_t φ1 · ((1 − c) x0_s + c x0_s1), c = 0.5/r1: with r1 = 0.5 the
        # x0_s weight is exactly 0, so the plan does not carry a pair of cancelling terms.
        c = 0.5 / R1
        x_t = x * (sigma_t / sigma_s) + (x0_s * (1.0 - c) + x0_s1 * c) * (-alpha_t * phi_1)

        (role_s, row_s), (role_s1, row_s1) = dpm_roles(k, shifted)
        call_s = ModelCall(j_s, model_time(s, time_input), role_s, row_s)
        call_s1 = ModelCall(
            j_s1, model_time(s1, time_input), role_s1, row_s1, input=x_s1.combination()
        )
        steps.append(SolverStep(calls=(call_s, call_s1), update=x_t.combination()))

    options: tuple[tuple[str, object], ...] = (
        ("shifted", bool(shifted)),
        ("order", 2),
        ("method", "singlestep"),
        ("predict_x0", True),
        ("solver_type", "dpm_solver"),
        ("r1", R1),
        ("skip_type", "time_uniform"),
        ("t_start", T_START),
        ("t_end", T_END),
    )
    return SamplerPlan(
        sampler="dpm-solver-2",
        nfe=nfe,
        steps=tuple(steps),
        noise_schedule=noise_schedule,
        time_input=time_input,
        options=options,
    )
