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

Odd NFE (as the official singlestep solver, LuChengTHU/dpm-solver): K = nfe//2 + 1 outer steps of
orders ``[2] * (K − 1) + [1]`` on ``linspace(1, 1e-3, nfe + 1)`` taken at the cumulative orders,
so the last step is one first-order step (DPM-Solver-1, data prediction) over half an interval:
``x_t = σ_t/σ_s · x − α_t φ1 · x0(x, s)``. Its single call is a cache step with router row K − 1
when shifted (like every s_k, k ≥ 1: it reuses what the previous midpoint computed, and there is
no finite difference to protect), a full call when unshifted. Checked against diffusers'
``DPMSolverSinglestepScheduler`` (tests/test_samplers.py).

Model timestep: ``"continuous"`` passes 1000·t (U-ViT's ``nnet(x, t · N)``); ``"discrete"``
passes DPM-Solver's discrete wrapper value ``1000 · max(t − 1/N, 0)``.
"""

from __future__ import annotations

import math

import torch

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import LinearForm, ModelCall, Role, SamplerPlan, SolverStep
from l2c_compile.samplers.schedules import (
    NUM_TRAIN_STEPS,
    DiscreteVP,
    check_noise_schedule,
    check_time_input,
)

R1 = 0.5  # midpoint in λ; the official default
T_START = 1.0
T_END = 1.0 / NUM_TRAIN_STEPS  # sample_ldm_discrete.py passes eps = 1 / N


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


def dpm_final_role(k: int, shifted: bool) -> tuple[Role, int | None]:
    """(role, router row) of the single call of a closing first-order step ``k`` (odd NFE).

    Shifted: like every s_k with k ≥ 1, a cache step reading router row k (it reuses what the
    previous midpoint, a full call, computed; with no midpoint there is no finite difference to
    protect). Unshifted: s_k calls are full, and the step has no midpoint to cache.
    """
    if shifted and k >= 1:
        return "cache", k
    return "full", None


def step_orders(nfe: int) -> list[int]:
    """The order of each outer step, as the official singlestep solver chooses for order 2.

    Even NFE: ``[2] * (nfe/2)``; odd NFE: ``[2] * (nfe//2) + [1]`` — one closing first-order
    step (``get_orders_and_timesteps_for_singlestep_solver`` in LuChengTHU/dpm-solver;
    diffusers' ``DPMSolverSinglestepScheduler.get_order_list`` ends odd step counts the same way).
    """
    return [2] * (nfe // 2) + [1] * (nfe % 2)


def _check_nfe(nfe: int) -> list[int]:
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise L2CError(f"DPM-Solver-2 needs a positive integer number of model calls, got {nfe!r}")
    return step_orders(nfe)


def outer_grid(nfe: int) -> list[float]:
    """The outer times of ``nfe`` model calls (one more than the number of outer steps).

    Even NFE: ``linspace(1, 1e-3, K + 1)`` (K = nfe/2), as U-ViT's solver builds it (the released
    routers' keys depend on it). Odd NFE: the official singlestep solver's time-uniform grid for
    uneven orders, ``linspace(1, 1e-3, nfe + 1)`` at the cumulative orders ``0, 2, 4, …, nfe``,
    so the closing first-order step spans half an interval.
    """
    orders = step_orders(nfe)
    if nfe % 2 == 0:
        return outer_times(len(orders))
    fine = torch.linspace(T_START, T_END, nfe + 1, dtype=torch.float32).tolist()
    picks = [0]
    for o in orders:
        picks.append(picks[-1] + o)
    return [float(fine[i]) for i in picks]


def dpm_solver2_plan(
    nfe: int,
    *,
    noise_schedule: str = "scaled_linear",
    time_input: str = "continuous",
    shifted: bool = True,
) -> SamplerPlan:
    """Singlestep DPM-Solver-2 (data prediction, r1 = 0.5, time-uniform) with ``nfe`` model calls.

    An odd ``nfe`` ends with one first-order step (DPM-Solver-1, i.e. DDIM in data prediction),
    as the official solver does; its call's L2C role is :func:`dpm_final_role`.
    """
    orders = _check_nfe(nfe)
    if not isinstance(shifted, bool):
        raise L2CError(f"DPM-Solver-2 option shifted must be true or false, got {shifted!r}")
    vp = DiscreteVP(check_noise_schedule(noise_schedule))
    check_time_input(time_input)
    times = outer_grid(nfe)
    steps = []
    j = 0  # index of the next model call
    for k, order in enumerate(orders):
        s, t = times[k], times[k + 1]
        lam_s, lam_t = float(vp.marginal_lambda(s)), float(vp.marginal_lambda(t))
        h = lam_t - lam_s
        alpha_s, alpha_t = float(vp.marginal_alpha(s)), float(vp.marginal_alpha(t))
        sigma_s, sigma_t = float(vp.marginal_std(s)), float(vp.marginal_std(t))
        phi_1 = math.expm1(-h)
        x = LinearForm(1.0)
        x0_s = x * (1.0 / alpha_s) + LinearForm.output(j) * (-sigma_s / alpha_s)
        if order == 1:
            # DPM-Solver-1 (data prediction): x_t = σ_t/σ_s · x − α_t φ1 · x0(x, s)
            x_t = x * (sigma_t / sigma_s) + x0_s * (-alpha_t * phi_1)
            role, row = dpm_final_role(k, shifted)
            call = ModelCall(j, model_time(s, time_input), role, row)
            steps.append(SolverStep(calls=(call,), update=x_t.combination()))
            j += 1
            continue
        s1 = float(vp.inverse_lambda(lam_s + R1 * h))
        alpha_s1, sigma_s1 = float(vp.marginal_alpha(s1)), float(vp.marginal_std(s1))
        phi_11 = math.expm1(-R1 * h)

        j_s, j_s1 = j, j + 1
        x_s1 = x * (sigma_s1 / sigma_s) + x0_s * (-alpha_s1 * phi_11)
        x0_s1 = x_s1 * (1.0 / alpha_s1) + LinearForm.output(j_s1) * (-sigma_s1 / alpha_s1)
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
        j += 2

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
