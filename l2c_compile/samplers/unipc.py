"""UniPC multistep with flow prediction as a SamplerPlan: diffusers' ``UniPCMultistepScheduler``
as Wan's pipelines configure it (``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``,
``flow_shift``; ``solver_order=2``, ``solver_type="bh2"``, ``predict_x0=True``,
``lower_order_final=True``, ``final_sigmas_type="zero"``, the corrector on every step).

The model predicts the velocity v; with α = 1 − σ and λ = log α − log σ, call i hands the
updates its data prediction ``m_i = x_i − σ_i v_i`` (``ModelCall.output``). The plan's state is
the sample the model sees: x_i, the predictor's output. Step i, h = λ_{i+1} − λ_i,
φ = expm1(−h) (bh2: B(h) = φ as well)::

    corrector (i ≥ 1, order q of the previous step's predictor), h_c = λ_i − λ_{i−1}:
        xc_i = x_i + α_i B(h_c) · (P_{i−1} − C_i)
        C_i  = ½ (m_i − m_{i−1})                                    q = 1
        C_i  = ρ_0 (m_{i−2} − m_{i−1}) / r + ρ_1 (m_i − m_{i−1})     q = 2, r = (λ_{i−2} − λ_{i−1}) / h_c
               (ρ_0, ρ_1) solving [[1, 1], [r, 1]] ρ = (b_1, b_2), b from the φ_k(h) recursion
    predictor (order p: 1 at i = 0 and at the last step, else 2):
        x_{i+1} = σ_{i+1}/σ_i · xc_i − α_{i+1} φ m_i − α_{i+1} B(h) P_i
        P_i  = 0 (p = 1),   ½ (m_{i−1} − m_i) / r',  r' = (λ_{i−1} − λ_i) / h   (p = 2)

diffusers' corrector restarts from the previous corrected sample; its first terms are the
predictor's, so the correction is the difference of the two residuals added to x_i, and every
step stays linear in the state and the m's. The last step lands on σ = 0 (α = 1, λ = ∞), where
the first-order predictor returns m_{N−1} itself. Coefficients in float64 from the scheduler's
float32 σ.

σ schedule (``use_flow_sigmas``): ``linspace(1, 1/1000, N + 1)`` without its last value, shifted
(``flow_shift``, or the exponential time shift with ``mu``) in float64, the first lowered by 1e-6
when it is 1 (diffusers keeps log α finite that way), rounded to float32, then σ = 0. Timesteps:
``int(σ·1000)`` (truncated, from the float64 σ), which Wan's transformer receives as is
(``time_input="sigma_1000"``).

Router training, which noises x0 straight to a step's start with no history, uses the update
diffusers takes when it starts there: the first-order predictor (``SolverStep.restart``).
Cadence: one call per step, DDIM's. Checked step for step against diffusers
(tests/test_flow_match.py). Source: diffusers ``schedulers/scheduling_unipc_multistep.py``
(``set_timesteps``, ``convert_model_output``, ``multistep_uni_p_bh_update``,
``multistep_uni_c_bh_update``, ``step``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import Combination, LinearForm, ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.ddim import ddim_role
from l2c_compile.samplers.flow_match import (
    check_flow_inputs,
    check_shift,
    check_sigmas,
    check_steps,
    exponential_time_shift,
    model_timestep,
    static_shift,
)
from l2c_compile.samplers.schedules import FLOW_SCHEDULE, NUM_TRAIN_STEPS

SAMPLER = "unipc-flow"
SOLVER_ORDER = 2
FIRST_SIGMA_OFFSET = 1e-6  # diffusers lowers σ_0 = 1 by this much


def unipc_flow_sigmas(nfe: int, *, shift: float = 1.0, mu: float | None = None) -> tuple[list[int], list[float]]:
    """(N integer timesteps, N + 1 σ) of ``set_timesteps(N)`` with flow sigmas (module docstring)."""
    base = np.linspace(1, 1 / NUM_TRAIN_STEPS, nfe + 1)[:-1]  # (N,) float64
    sigmas = exponential_time_shift(base, mu) if mu is not None else static_shift(base, shift)
    if abs(sigmas[0] - 1) < FIRST_SIGMA_OFFSET:
        sigmas[0] -= FIRST_SIGMA_OFFSET
    timesteps = [int(t) for t in sigmas * NUM_TRAIN_STEPS]  # truncated, like astype(int64)
    return timesteps, [*(float(s) for s in sigmas.astype(np.float32)), 0.0]


def _lam(sigma: float) -> float:
    """λ = log α − log σ of a flow state (α = 1 − σ); ∞ at σ = 0."""
    return math.log(1.0 - sigma) - math.log(sigma) if sigma > 0 else math.inf


def _m(j: int) -> LinearForm:
    return LinearForm.output(j)


def unipc_flow_from_sigmas(
    timesteps: Sequence[float],
    sigmas: Sequence[float],
    *,
    time_input: str = "sigma_1000",
    options: tuple[tuple[str, object], ...] = (),
) -> SamplerPlan:
    """The UniPC plan over the scheduler's ``timesteps`` (N) and ``sigmas`` (N + 1, the last 0),
    coefficients in float64. L2CError for inconsistent inputs."""
    check_flow_inputs(SAMPLER, FLOW_SCHEDULE, time_input)
    sig = check_sigmas(SAMPLER, timesteps, sigmas)
    if sig[-1] != 0.0:
        raise L2CError(f"{SAMPLER} supports final_sigmas_type='zero' only (last sigma {sig[-1]})")
    n = len(timesteps)
    lam = [_lam(s) for s in sig]
    # predictor order per step: 1 to start, 2 after, 1 again at the last step (lower_order_final)
    orders = [1 if i == 0 else min(SOLVER_ORDER, n - i) for i in range(n)]
    pred_res: list[LinearForm] = []  # P_i: the predictor's history term of step i
    steps = []
    for i, t in enumerate(timesteps):
        x = LinearForm(1.0)
        if i >= 1:  # the corrector, with the order of the previous step's predictor
            h = lam[i] - lam[i - 1]
            b_h = math.expm1(-h)
            x = x + (pred_res[i - 1] + _corrector_residual(i, orders[i - 1], lam, -h) * -1.0) * (
                (1.0 - sig[i]) * b_h)
        update, residual = _predictor(x, i, orders[i], sig, lam)
        pred_res.append(residual)
        restart = None
        if any(j < i for j, _ in update.eps):  # started here without history: first order
            restart, _ = _predictor(LinearForm(1.0), i, 1, sig, lam)
        role, row = ddim_role(n - 1 - i, i)
        x0 = Combination(1.0, ((i, -sig[i]),))  # m_i = x_i − σ_i v_i
        call = ModelCall(i, model_timestep(t, time_input), role, row, output=x0, sigma=sig[i])
        steps.append(SolverStep(calls=(call,), update=update, restart=restart))
    opts = (("solver_order", SOLVER_ORDER), ("solver_type", "bh2"), ("lower_order_final", True),
            ("final_sigma", 0.0), *options)
    return SamplerPlan(SAMPLER, n, tuple(steps), FLOW_SCHEDULE, time_input, opts, prediction="velocity")


def _predictor(
    x: LinearForm, i: int, order: int, sig: list[float], lam: list[float]
) -> tuple[Combination, LinearForm]:
    """UniP-``order`` (bh2) from state ``x`` at σ_i to σ_{i+1}: the update and its residual P_i."""
    alpha_t = 1.0 - sig[i + 1]
    h = lam[i + 1] - lam[i]
    phi = math.expm1(-h)  # = B(h) for bh2
    out = x * (sig[i + 1] / sig[i]) + _m(i) * (-alpha_t * phi)
    residual = LinearForm(0.0)
    if order == 2:
        r = (lam[i - 1] - lam[i]) / h
        residual = (_m(i - 1) + _m(i) * -1.0) * (0.5 / r)
        out = out + residual * (-alpha_t * phi)
    return out.combination(), residual


def _corrector_residual(i: int, order: int, lam: list[float], hh: float) -> LinearForm:
    """C_i of UniC-``order`` (bh2) at step i ≥ 1, ``hh`` = −(λ_i − λ_{i−1})."""
    d1_t = _m(i) + _m(i - 1) * -1.0
    if order == 1:
        return d1_t * 0.5
    b_h = math.expm1(hh)
    phi_k = math.expm1(hh) / hh - 1.0  # the φ_k(h) recursion of UniC, k = 1, 2
    b1 = phi_k / b_h
    b2 = (phi_k / hh - 0.5) * 2.0 / b_h
    r = (lam[i - 2] - lam[i - 1]) / -hh
    rho_0 = (b1 - b2) / (1.0 - r)  # [[1, 1], [r, 1]] · (ρ_0, ρ_1) = (b1, b2)
    rho_1 = b1 - rho_0
    return (_m(i - 2) + _m(i - 1) * -1.0) * (rho_0 / r) + d1_t * rho_1


def unipc_flow_plan(
    nfe: int,
    *,
    noise_schedule: str = FLOW_SCHEDULE,
    time_input: str = "sigma_1000",
    shift: float = 1.0,
    mu: float | None = None,
) -> SamplerPlan:
    """UniPC (UniP-2 / UniC, bh2) with flow prediction and ``nfe`` steps; ``shift`` is the
    scheduler's ``flow_shift`` (Wan 2.1: 3.0 at 480p, 5.0 at 720p), ``mu`` its dynamic shift.
    L2CError for a bad option, NFE or model convention."""
    check_flow_inputs(SAMPLER, noise_schedule, time_input)
    check_steps(SAMPLER, nfe)
    shift, mu = check_shift(shift, mu)
    timesteps, sigmas = unipc_flow_sigmas(nfe, shift=shift, mu=mu)
    options = (("shift", shift), ("mu", mu))
    return unipc_flow_from_sigmas(timesteps, sigmas, time_input=time_input, options=options)
