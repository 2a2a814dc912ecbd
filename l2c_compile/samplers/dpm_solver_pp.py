"""DPM-Solver++ 2M (multistep, data prediction) as a SamplerPlan, as PixArt samples with it.

The sampler of diffusers' ``DPMSolverMultistepScheduler`` with its defaults
(``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``,
``lower_order_final=True``, ``final_sigmas_type="zero"``, ε prediction, no thresholding), which
is what ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` ship with. With σ_i the scheduler's
``sigmas`` (``sqrt((1 − ᾱ)/ᾱ)`` at the step's timestep, 0 after the last), α_i = 1/sqrt(σ_i² + 1),
s_i = σ_i α_i and λ_i = log α_i − log s_i, step i (N steps) does::

    x0_i    = (x_i − s_i ε_i) / α_i                             (data prediction)
    h       = λ_{i+1} − λ_i,   φ = expm1(−h)
    order 1 (i = 0, and the last step):  x_{i+1} = s_{i+1}/s_i · x_i − α_{i+1} φ · x0_i
    order 2 (otherwise), r0 = (λ_i − λ_{i−1}) / h:
            x_{i+1} = s_{i+1}/s_i · x_i − α_{i+1} φ · x0_i − ½ α_{i+1} φ · (x0_i − x0_{i−1}) / r0

After the last step σ = 0 (s = 0, α = 1, λ = ∞), so the last update is x0 itself. Every term is
linear in the state and the ε outputs once the σ are known, so the plan stores each call's
``x0`` conversion (``ModelCall.output``) and each update's coefficients, in float64. The σ table
is the scheduler's own: float32 ᾱ (diffusers builds β in float32), σ rounded to float32, as
``set_timesteps`` leaves it. Checked step for step against diffusers (tests/test_dpm_solver_pp.py).

Timesteps (``timestep_spacing="linspace"``): ``linspace(0, 999, N + 1).round()`` descending,
without the last; the network receives the integer timestep (``"discrete"``), or ``t + 1``
(``"continuous"``, as DDIM does).

Cadence: one model call per step, so the L2C cadence is DDIM's (a cache step between full steps,
the first call always full): the step at position p from the end (0 = last) is full when p is
odd, a cache step reading router row p when even. Source: diffusers
``schedulers/scheduling_dpmsolver_multistep.py`` (``set_timesteps``, ``convert_model_output``,
``dpm_solver_first_order_update``, ``multistep_dpm_solver_second_order_update``, ``step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import Combination, ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.ddim import ddim_role
from l2c_compile.samplers.schedules import NUM_TRAIN_STEPS, check_noise_schedule, check_time_input

SAMPLER = "dpm-solver++"
# diffusers' β endpoints per table (DDPMScheduler/DPMSolverMultistepScheduler configs).
BETA_RANGE = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}


def diffusers_sigmas(noise_schedule: str) -> np.ndarray:
    """σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), t = 0..999, computed as diffusers does (float32 β and ᾱ)."""
    start, end = BETA_RANGE[check_noise_schedule(noise_schedule)]
    if noise_schedule == "linear":
        betas = torch.linspace(start, end, NUM_TRAIN_STEPS, dtype=torch.float32)
    else:
        betas = torch.linspace(start**0.5, end**0.5, NUM_TRAIN_STEPS, dtype=torch.float32) ** 2
    ac = torch.cumprod(1.0 - betas, dim=0)  # (1000,) float32
    return (((1 - ac) / ac) ** 0.5).numpy()  # (1000,) float32


def linspace_timesteps(nfe: int) -> list[int]:
    """The N sampling timesteps of ``timestep_spacing="linspace"``, descending (999 first)."""
    ts = np.linspace(0, NUM_TRAIN_STEPS - 1, nfe + 1).round()[::-1][:-1].astype(np.int64)
    return [int(t) for t in ts]


def dpm_solver_pp_plan(
    nfe: int, *, noise_schedule: str = "linear", time_input: str = "discrete"
) -> SamplerPlan:
    """DPM-Solver++ 2M with ``nfe`` steps (one model call each) on a 1000-step β table.

    ``noise_schedule``: "linear" (PixArt, DiT) or "scaled_linear"; ``time_input``: "discrete"
    (the integer timestep) or "continuous" (t + 1). L2CError for a bad name or NFE.
    """
    check_time_input(time_input)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= NUM_TRAIN_STEPS:
        raise L2CError(f"dpm-solver++ takes 1..{NUM_TRAIN_STEPS} steps, got {nfe!r}")
    table = diffusers_sigmas(noise_schedule)
    timesteps = linspace_timesteps(nfe)
    sigmas = np.concatenate([table[timesteps], [0.0]]).astype(np.float32)
    return dpm_solver_pp_from_sigmas(
        timesteps, [float(s) for s in sigmas], noise_schedule=noise_schedule, time_input=time_input
    )


def _alpha_sigma(sigma: float) -> tuple[float, float]:
    """(α, s) of a VP state whose noise-to-signal ratio is ``sigma`` (float64)."""
    alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
    return alpha, sigma * alpha


def dpm_solver_pp_from_sigmas(
    timesteps: Sequence[int],
    sigmas: Sequence[float],
    *,
    noise_schedule: str = "linear",
    time_input: str = "discrete",
    options: tuple[tuple[str, object], ...] = (),
    final_first_order: bool = True,
) -> SamplerPlan:
    """The plan over explicit ``timesteps`` (N, descending) and ``sigmas`` (N + 1; the last is
    the σ after the final step, 0 for ``final_sigmas_type="zero"``), coefficients in float64.
    ``final_first_order``: the last step is first order (diffusers' ``lower_order_final`` rule;
    always so onto σ = 0).

    L2CError when the lengths disagree or a σ is negative or not finite.
    """
    n = len(timesteps)
    if n < 1 or len(sigmas) != n + 1:
        raise L2CError(
            f"dpm-solver++ needs N timesteps and N + 1 sigmas, got {n} and {len(sigmas)}"
        )
    sig = [float(s) for s in sigmas]
    if any(not math.isfinite(s) or s < 0 for s in sig) or any(s == 0 for s in sig[:-1]):
        raise L2CError("dpm-solver++ sigmas must be finite and positive (the last may be 0)")
    alpha, s_t = zip(*(_alpha_sigma(s) for s in sig), strict=True)
    lam = [
        math.log(a) - math.log(s) if s > 0 else math.inf for a, s in zip(alpha, s_t, strict=True)
    ]
    offset = 1 if time_input == "continuous" else 0
    steps = []
    for i, t in enumerate(timesteps):
        role, row = ddim_role(n - 1 - i, i)
        x0 = Combination(1.0 / alpha[i], ((i, -s_t[i] / alpha[i]),))  # (x − s ε) / α
        call = ModelCall(
            index=i, timestep=float(int(t) + offset), role=role, router_index=row, output=x0
        )
        if s_t[i + 1] == 0.0:  # the last step onto σ = 0: h = ∞, x_{i+1} = x0_i
            update = Combination(0.0, ((i, 1.0),))
        else:
            h = lam[i + 1] - lam[i]
            phi = math.expm1(-h)
            ratio = s_t[i + 1] / s_t[i]
            first_order = Combination(ratio, ((i, -alpha[i + 1] * phi),))
            if i == 0 or (i == n - 1 and final_first_order):
                update = first_order
            else:
                r0 = (lam[i] - lam[i - 1]) / h
                d1 = -0.5 * alpha[i + 1] * phi / r0  # coefficient of (x0_i − x0_{i−1})
                update = Combination(ratio, ((i - 1, -d1), (i, -alpha[i + 1] * phi + d1)))
                # started here without history (router training), the solver takes a first-order step
                steps.append(SolverStep(calls=(call,), update=update, restart=first_order))
                continue
        steps.append(SolverStep(calls=(call,), update=update))
    opts = (
        ("algorithm", "dpmsolver++"),
        ("solver_order", 2),
        ("final_sigma", float(sig[-1])),
        *options,
    )
    return SamplerPlan(SAMPLER, n, tuple(steps), noise_schedule, time_input, opts)
