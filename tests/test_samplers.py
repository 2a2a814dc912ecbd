"""Sampler plans: timesteps, L2C cadence, and update coefficients against independent references."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2c_compile.errors import L2CError
from l2c_compile.samplers import (
    SAMPLERS,
    ModelCall,
    SamplerPlan,
    ddim_plan,
    dpm_solver2_plan,
    execute_plan,
    make_plan,
    sampler_options,
)
from l2c_compile.samplers.ddim import ddim_plan_for_timesteps, space_timesteps
from l2c_compile.samplers.dpm_solver import outer_grid
from l2c_compile.samplers.schedules import DiscreteVP, alphas_cumprod, betas

# fmt: off
# Spec §4.2: space_timesteps(1000, "20").
DDIM20_TIMESTEPS = [0, 53, 105, 158, 210, 263, 315, 368, 421, 473, 526, 578, 631, 684, 736, 789,
                    841, 894, 946, 999]
# Spec §4.3: round(linspace(1, 0.001, K + 1) * 1000) in float32.
DPM20_KEYS = [1000, 900, 800, 700, 600, 501, 401, 301, 201, 101, 1]
DPM50_KEYS = [1000, 960, 920, 880, 840, 800, 760, 720, 680, 640, 600, 560, 520, 481, 441, 401, 361,
              321, 281, 241, 201, 161, 121, 81, 41, 1]
# fmt: on


def wiggly_eps(call: ModelCall, x: torch.Tensor) -> torch.Tensor:
    """A fixed, nonlinear stand-in for a network: depends on the input and the model timestep."""
    t = call.timestep
    return 0.6 * torch.tanh(x) + 0.2 * torch.sin(3.0 * x + t / 150.0) + 0.1 * math.cos(t / 90.0)


def roles(plan: SamplerPlan) -> list[tuple[str, int | None]]:
    return [(c.role, c.router_index) for c in plan.calls]


# ---------------------------------------------------------------------------------------------
# Noise schedules
# ---------------------------------------------------------------------------------------------


def test_noise_schedule_tables() -> None:
    lin, sd = betas("linear"), betas("scaled_linear")
    assert lin.dtype == np.float64 and lin.shape == (1000,)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    assert sd[0] == pytest.approx(0.00085) and sd[-1] == pytest.approx(0.012)
    np.testing.assert_allclose(alphas_cumprod("linear"), np.cumprod(1 - lin), rtol=1e-15)
    with pytest.raises(ValueError):
        lin[0] = 1.0  # the cached table is read-only
    with pytest.raises(L2CError, match="did you mean 'scaled_linear'"):
        betas("scaled_lin")


def test_discrete_vp_knots_and_inverse() -> None:
    vp = DiscreteVP("scaled_linear")
    ac = alphas_cumprod("scaled_linear")
    knots = np.arange(1, 1001) / 1000
    # Step i sits at t = (i + 1) / N with α² = ᾱ_i.
    np.testing.assert_allclose(vp.marginal_alpha(knots) ** 2, ac, rtol=1e-12)
    np.testing.assert_allclose(vp.marginal_std(knots) ** 2, 1 - ac, rtol=1e-12)
    t = np.linspace(0.0013, 0.9993, 57)
    np.testing.assert_allclose(vp.inverse_lambda(vp.marginal_lambda(t)), t, rtol=1e-10)
    # Between knots log α is linear in t.
    mid = vp.marginal_log_mean_coeff(0.0105)
    assert mid == pytest.approx(0.25 * (math.log(ac[9]) + math.log(ac[10])), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# DDIM
# ---------------------------------------------------------------------------------------------


def test_ddim_respacing_matches_spec() -> None:
    assert space_timesteps(1000, 20) == DDIM20_TIMESTEPS
    t50 = space_timesteps(1000, 50)
    assert t50[:4] == [0, 20, 41, 61] and t50[-2:] == [979, 999] and len(set(t50)) == 50
    assert space_timesteps(1000, 10) == [111 * k for k in range(10)]
    # Accumulating the stride: 10 × 49.95 lands just under 499.5, so N = 21 keeps 499 (not 500).
    assert space_timesteps(1000, 21)[10] == 499
    assert space_timesteps(1000, 1) == [0]
    plan = ddim_plan(20)
    assert [c.timestep for c in plan.calls] == [float(t) for t in reversed(DDIM20_TIMESTEPS)]


def test_ddim20_cadence() -> None:
    plan = ddim_plan(20)
    cache = [(c.timestep, c.router_index) for c in plan.calls if c.role == "cache"]
    # Spec §4.2: cache steps t = 946, 841, …, 0 with router idx 18, 16, …, 0.
    cache_t = [946, 841, 736, 631, 526, 421, 315, 210, 105, 0]
    assert cache == [(float(t), i) for t, i in zip(cache_t, range(18, -1, -2), strict=True)]
    assert all(c.router_index is None for c in plan.calls if c.role == "full")
    assert plan.calls[0].role == "full" and plan.calls[-1].role == "cache"


def test_ddim50_and_odd_cadence() -> None:
    r50 = roles(ddim_plan(50))
    assert r50 == [("full", None) if p % 2 else ("cache", p) for p in range(49, -1, -1)]
    # Odd N: position N−1 is even, but nothing is cached before the first call, so it is full.
    r7 = roles(ddim_plan(7))
    full = ("full", None)
    assert r7 == [full, full, ("cache", 4), full, ("cache", 2), full, ("cache", 0)]
    assert roles(ddim_plan(1)) == [("full", None)]


def test_ddim_time_input_conventions() -> None:
    disc = ddim_plan(10)
    cont = ddim_plan(10, time_input="continuous")
    assert [c.timestep + 1 for c in disc.calls] == [c.timestep for c in cont.calls]
    # Same update either way; "continuous" t_c = (t + 1)/1000 is the VP knot of step t.
    assert [s.update for s in disc.steps] == [s.update for s in cont.steps]
    vp, ac = DiscreteVP("linear"), alphas_cumprod("linear")
    for d, c in zip(disc.calls, cont.calls, strict=True):
        assert vp.marginal_alpha(c.timestep / 1000) ** 2 == pytest.approx(
            ac[int(d.timestep)], rel=1e-12
        )


def _guided_diffusion_ddim(n: int, x: torch.Tensor) -> torch.Tensor:
    """guided-diffusion's SpacedDiffusion + ddim_sample (η = 0, no clipping), written out plainly."""
    kept = set(space_timesteps(1000, n))
    ac_full = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))
    new_betas, timestep_map, last = [], [], 1.0
    for i, a in enumerate(ac_full):
        if i in kept:
            new_betas.append(1 - a / last)
            last = a
            timestep_map.append(i)
    ac = np.cumprod(1.0 - np.array(new_betas))
    ac_prev = np.append(1.0, ac[:-1])
    for i in reversed(range(n)):
        t = timestep_map[i]
        eps = wiggly_eps(ModelCall(0, float(t), "full", None), x)
        x0 = math.sqrt(1 / ac[i]) * x - math.sqrt(1 / ac[i] - 1) * eps
        eps = (math.sqrt(1 / ac[i]) * x - x0) / math.sqrt(1 / ac[i] - 1)
        x = x0 * math.sqrt(ac_prev[i]) + math.sqrt(1 - ac_prev[i]) * eps
    return x


@pytest.mark.parametrize("n", [1, 7, 20, 21])
def test_ddim_matches_guided_diffusion(n: int) -> None:
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ours = execute_plan(ddim_plan(n), noise, wiggly_eps)
    torch.testing.assert_close(ours, _guided_diffusion_ddim(n, noise), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("n", [7, 20, 21, 50])
def test_ddim_timesteps_vs_diffusers_linspace(n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_spacing="linspace",
        set_alpha_to_one=True,
        clip_sample=False,
    )
    sched.set_timesteps(n)
    ours = [int(c.timestep) for c in ddim_plan(n).calls]
    theirs = sched.timesteps.tolist()
    if n == 21:  # diffusers rounds k·999/20 directly and gets 500 where the official code gets 499
        assert [(a, b) for a, b in zip(ours, theirs, strict=True) if a != b] == [(499, 500)]
    else:
        assert ours == theirs
    np.testing.assert_allclose(
        sched.alphas_cumprod.double().numpy(), alphas_cumprod("linear"), rtol=2e-6
    )


@pytest.mark.parametrize("n", [10, 20, 25])
def test_ddim_trajectory_vs_diffusers_ddim_scheduler(n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    # DDIMScheduler.step always takes prev = t − 1000 // N, which is only the next kept timestep
    # for "leading" spacing; so the step-by-step comparison runs on diffusers' own timesteps.
    sched = diffusers.DDIMScheduler(
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        timestep_spacing="leading",
        steps_offset=0,
        set_alpha_to_one=True,
        clip_sample=False,
    )
    sched.set_timesteps(n)
    plan = ddim_plan_for_timesteps(sched.timesteps.tolist())
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = noise
    for t in sched.timesteps.tolist():
        eps = wiggly_eps(ModelCall(0, float(t), "full", None), x)
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    ours = execute_plan(plan, noise, wiggly_eps)
    torch.testing.assert_close(ours, x, rtol=2e-5, atol=2e-5)  # diffusers keeps ᾱ in float32


@pytest.mark.parametrize("n", [20, 21])
def test_ddim_official_trajectory_vs_diffusers_first_order_dpm_solver(n: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    # First-order DPM-Solver++ is DDIM (η = 0); this scheduler takes custom timesteps and steps
    # to the next one in the list, so it checks the official linspace respacing end to end.
    sched = diffusers.DPMSolverMultistepScheduler(
        beta_schedule="linear",
        beta_start=1e-4,
        beta_end=0.02,
        solver_order=1,
        algorithm_type="dpmsolver++",
        final_sigmas_type="zero",
    )
    plan = ddim_plan(n)
    sched.set_timesteps(timesteps=[int(c.timestep) for c in plan.calls])
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = noise
    for t in sched.timesteps.tolist():
        eps = wiggly_eps(ModelCall(0, float(t), "full", None), x)
        x = sched.step(eps, t, x).prev_sample
    torch.testing.assert_close(execute_plan(plan, noise, wiggly_eps), x, rtol=5e-5, atol=5e-5)


# ---------------------------------------------------------------------------------------------
# DPM-Solver-2
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("nfe", "keys"), [(20, DPM20_KEYS), (50, DPM50_KEYS)])
def test_dpm_outer_times_and_router_keys(nfe: int, keys: list[int]) -> None:
    plan = dpm_solver2_plan(nfe)
    outer = [s.calls[0] for s in plan.steps]
    assert [round(c.timestep) for c in outer] == keys[:-1]
    # The router row of each cache call is the index of its rounded key, as timestep_map has it.
    for c in outer[1:]:
        assert c.role == "cache" and keys.index(round(c.timestep)) == c.router_index
    # Midpoints lie strictly between consecutive outer times.
    for k, step in enumerate(plan.steps):
        assert keys[k + 1] - 1 < step.calls[1].timestep < step.calls[0].timestep


@pytest.mark.parametrize("nfe", [2, 20, 50])
def test_dpm_shifted_and_unshifted_cadence(nfe: int) -> None:
    k = nfe // 2
    shifted = roles(dpm_solver2_plan(nfe))
    expect = [("full", None), ("full", None)]
    for i in range(1, k):
        expect += [("cache", i), ("full", None)]
    assert shifted == expect
    assert sum(r == "cache" for r, _ in shifted) == k - 1  # 9 of 20, 24 of 50 (spec §4.3)
    unshifted = roles(dpm_solver2_plan(nfe, shifted=False))
    assert unshifted == [r for i in range(k) for r in (("full", None), ("cache", i))]


@pytest.mark.parametrize("bad", [0, -2, -3, 2.0, True, "4"])
def test_dpm_rejects_impossible_nfe(bad: object) -> None:
    with pytest.raises(L2CError, match="positive integer number of model calls"):
        dpm_solver2_plan(bad)  # type: ignore[arg-type]


def _dpm_reference(nfe: int, x: torch.Tensor, eps_fn) -> tuple[torch.Tensor, list[float]]:
    """The published singlestep DPM-Solver-2 (data prediction, r1 = ½), step by step in float64.

    Returns the final state and the continuous times at which the model was called.
    """
    knots_t = np.arange(1, 1001) / 1000
    knots_la = 0.5 * np.cumsum(np.log(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2))

    def log_alpha(t: float) -> float:
        return float(np.interp(t, knots_t, knots_la))

    def lam(t: float) -> float:
        la = log_alpha(t)
        return la - 0.5 * math.log(1 - math.exp(2 * la))

    def t_of_lam(lmb: float) -> float:
        la = -0.5 * math.log1p(math.exp(-2 * lmb))
        return float(np.interp(la, knots_la[::-1], knots_t[::-1]))

    def x0(x_in: torch.Tensor, t: float) -> torch.Tensor:
        a = math.exp(log_alpha(t))
        s = math.sqrt(1 - a * a)
        called.append(t)
        return (x_in - s * eps_fn(ModelCall(0, t * 1000, "full", None), x_in)) / a

    called: list[float] = []
    k_steps, r1 = nfe // 2, 0.5
    grid = torch.linspace(1.0, 1e-3, k_steps + 1).tolist()
    for s, t in itertools.pairwise(grid):
        h = lam(t) - lam(s)
        s1 = t_of_lam(lam(s) + r1 * h)
        sig = {u: math.sqrt(1 - math.exp(2 * log_alpha(u))) for u in (s, s1, t)}
        a_s1, a_t = math.exp(log_alpha(s1)), math.exp(log_alpha(t))
        phi_11, phi_1 = math.expm1(-r1 * h), math.expm1(-h)
        m_s = x0(x, s)
        x_s1 = (sig[s1] / sig[s]) * x - (a_s1 * phi_11) * m_s
        m_s1 = x0(x_s1, s1)
        x = (sig[t] / sig[s]) * x - (a_t * phi_1) * m_s - (0.5 / r1) * (a_t * phi_1) * (m_s1 - m_s)
    return x, called


@pytest.mark.parametrize("nfe", [2, 10, 20, 50])
def test_dpm_matches_published_update(nfe: int) -> None:
    noise = torch.randn(
        2, 4, 4, 4, generator=torch.Generator().manual_seed(nfe), dtype=torch.float64
    )
    ref, called = _dpm_reference(nfe, noise, wiggly_eps)
    plan = dpm_solver2_plan(nfe)
    np.testing.assert_allclose(
        [c.timestep for c in plan.calls], np.array(called) * 1000, rtol=1e-12
    )
    torch.testing.assert_close(execute_plan(plan, noise, wiggly_eps), ref, rtol=1e-10, atol=1e-10)
    # The cadence only labels calls: the unshifted plan computes the same trajectory.
    unshifted = execute_plan(dpm_solver2_plan(nfe, shifted=False), noise, wiggly_eps)
    torch.testing.assert_close(unshifted, ref, rtol=1e-10, atol=1e-10)


def test_dpm_discrete_time_input() -> None:
    cont, disc = dpm_solver2_plan(10), dpm_solver2_plan(10, time_input="discrete")
    for c, d in zip(cont.calls, disc.calls, strict=True):
        assert d.timestep == pytest.approx(max(c.timestep - 1.0, 0.0), abs=1e-9)
    assert [s.update for s in cont.steps] == [s.update for s in disc.steps]


def test_dpm_schedule_quantities_vs_diffusers() -> None:
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverSinglestepScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012
    )
    vp = DiscreteVP("scaled_linear")
    knots = np.arange(1, 1001) / 1000
    np.testing.assert_allclose(
        sched.alphas_cumprod.double().numpy(), alphas_cumprod("scaled_linear"), rtol=2e-6
    )
    np.testing.assert_allclose(
        sched.lambda_t.double().numpy(), vp.marginal_lambda(knots), atol=2e-5
    )
    np.testing.assert_allclose(sched.sigma_t.double().numpy(), vp.marginal_std(knots), atol=2e-6)


# ---------------------------------------------------------------------------------------------
# Both samplers: degenerate predictors and a Gaussian toy with a closed-form ε
# ---------------------------------------------------------------------------------------------


def _alpha_bar_of(plan: SamplerPlan, call: ModelCall) -> float:
    """ᾱ at a call's noise level, recovered from its model timestep (both time conventions)."""
    t_c = (call.timestep + 1) / 1000 if plan.time_input == "discrete" else call.timestep / 1000
    return math.exp(2 * DiscreteVP(plan.noise_schedule).marginal_log_mean_coeff(t_c))


@pytest.mark.parametrize(
    "plan",
    [ddim_plan(20), ddim_plan(7), dpm_solver2_plan(20), dpm_solver2_plan(50)],
    ids=["ddim20", "ddim7", "dpm20", "dpm50"],
)
def test_zero_data_prediction(plan: SamplerPlan) -> None:
    # ε = x / σ means the predicted clean sample x0 = (x − σ ε)/α is exactly 0. Then every
    # update scales x by σ_next/σ: DDIM ends at ᾱ = 1 (σ = 0) → 0; DPM-Solver-2 at t = 1e-3.
    def eps_fn(call: ModelCall, x: torch.Tensor) -> torch.Tensor:
        return x / math.sqrt(1 - _alpha_bar_of(plan, call))

    noise = torch.randn(4, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = execute_plan(plan, noise, eps_fn)
    if plan.sampler == "ddim":
        torch.testing.assert_close(out, torch.zeros_like(noise), rtol=0, atol=1e-12)
    else:
        vp = DiscreteVP(plan.noise_schedule)
        t_end = float(torch.tensor(1e-3, dtype=torch.float32))
        ratio = float(vp.marginal_std(t_end) / vp.marginal_std(1.0))
        assert ratio < 0.03  # ≈ sqrt(β_0)
        torch.testing.assert_close(out, ratio * noise, rtol=1e-10, atol=1e-12)


MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
STD = torch.tensor([0.5, 1.0, 0.3, 2.0], dtype=torch.float64)


def _gaussian_moments(
    plan: SamplerPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, std) of the sampler's output from x_T ~ N(0, 1), and of the exact ODE flow.

    Data x0 ~ N(MU, STD²) gives x_t ~ N(√ᾱ MU, ᾱ STD² + 1 − ᾱ) and the exact
    ε(x, t) = σ (x − √ᾱ MU) / (ᾱ STD² + 1 − ᾱ). With it the sampler is affine in x_T, so two
    runs (x_T = 0 and x_T = 1) give the output distribution exactly, without sampling.
    """

    def eps_fn(call: ModelCall, x: torch.Tensor) -> torch.Tensor:
        ab = _alpha_bar_of(plan, call)
        return math.sqrt(1 - ab) * (x - math.sqrt(ab) * MU) / (ab * STD**2 + 1 - ab)

    out = execute_plan(plan, torch.stack([torch.zeros(4), torch.ones(4)]).double(), eps_fn)
    mean, std = out[0], (out[1] - out[0]).abs()

    ab_start = float(alphas_cumprod(plan.noise_schedule)[-1])
    if plan.sampler == "ddim":
        ab_end = 1.0
    else:
        t_end = float(torch.tensor(1e-3, dtype=torch.float32))
        ab_end = float(DiscreteVP(plan.noise_schedule).marginal_alpha(t_end)) ** 2
    v_start, v_end = ab_start * STD**2 + 1 - ab_start, ab_end * STD**2 + 1 - ab_end
    gain = torch.sqrt(v_end / v_start)
    exact_mean = math.sqrt(ab_end) * MU - gain * math.sqrt(ab_start) * MU
    return mean, std, exact_mean, gain


def _toy_error(plan: SamplerPlan) -> float:
    mean, std, exact_mean, exact_std = _gaussian_moments(plan)
    return max((mean - exact_mean).abs().max().item(), (std - exact_std).abs().max().item())


@pytest.mark.parametrize(
    ("make", "nfes", "tol"),
    [
        (ddim_plan, (10, 50, 250), 0.02),
        (dpm_solver2_plan, (10, 50, 200), 5e-3),
    ],
    ids=["ddim", "dpm-solver-2"],
)
def test_gaussian_toy_converges(make, nfes: tuple[int, ...], tol: float) -> None:
    errors = [_toy_error(make(n)) for n in nfes]
    # Each 4-5x more NFE cuts the error at least 3x (DDIM is first order; DPM-Solver-2's
    # time-uniform grid leaves a large last λ-step, so it shows ~1.5th order here).
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3, errors
    assert errors[-1] < tol, errors
    # The flow lands near the data moments, up to the start being only nearly N(0, 1): the true
    # x_T has mean √ᾱ_T·μ (√ᾱ_T = 0.006 for "linear", 0.068 for "scaled_linear").
    plan = make(nfes[-1])
    mean, std, _, _ = _gaussian_moments(plan)
    mismatch = math.sqrt(float(alphas_cumprod(plan.noise_schedule)[-1]))
    torch.testing.assert_close(mean, MU, rtol=1.2 * mismatch, atol=0.01)
    torch.testing.assert_close(std, STD, rtol=0.03, atol=0.01)


def test_gaussian_toy_second_order_beats_ddim() -> None:
    assert _toy_error(dpm_solver2_plan(50)) < _toy_error(ddim_plan(50)) / 2


# ---------------------------------------------------------------------------------------------
# make_plan and the plan as data
# ---------------------------------------------------------------------------------------------


def test_make_plan_dispatch_and_options() -> None:
    assert SAMPLERS == ("ddim", "dpm-solver-2", "dpm-solver++", "flow-euler", "unipc-flow")
    assert make_plan("ddim", 20) == ddim_plan(20)
    plan = make_plan("dpm-solver-2", 20, shifted=False)
    assert plan == dpm_solver2_plan(20, shifted=False)
    assert dict(plan.options)["shifted"] is False and dict(plan.options)["r1"] == 0.5
    assert dict(make_plan("dpm-solver-2", 20).options)["shifted"] is True
    p = make_plan("ddim", 10, noise_schedule="scaled_linear", time_input="continuous")
    assert (p.noise_schedule, p.time_input) == ("scaled_linear", "continuous")
    assert sampler_options("dpm-solver-2") == ("shifted",) and sampler_options("ddim") == ()
    described = json.loads(json.dumps(plan.describe()))
    assert described["options"]["shifted"] is False and len(described["calls"]) == 20


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("ddmi", 20), {}, "did you mean 'ddim'"),
        (("dpm-solver2", 20), {}, "did you mean 'dpm-solver-2'"),
        (("ddim", 0), {}, "positive integer"),
        (("ddim", 1001), {}, "cannot take 1001"),
        (("dpm-solver-2", 0), {}, "positive integer"),
        (("dpm-solver-2", 20), {"shifed": True}, "did you mean 'shifted'"),
        (("ddim", 20), {"shifted": True}, "has no option 'shifted'"),
        (("ddim", 20), {"noise_schedule": "cosine"}, "unknown noise schedule"),
        (("ddim", 20), {"time_input": "discret"}, "did you mean 'discrete'"),
        (("dpm-solver-2", 20), {"shifted": "no"}, "true or false"),
    ],
)
def test_make_plan_errors(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(L2CError, match=match):
        make_plan(*args, **kwargs)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300))
def test_ddim_plan_invariants(n: int) -> None:
    plan = ddim_plan(n)
    ts = [c.timestep for c in plan.calls]
    assert len(ts) == n and ts[-1] == 0.0
    assert n == 1 or ts[0] == 999.0
    assert all(a > b for a, b in itertools.pairwise(ts))
    for i, c in enumerate(plan.calls):
        pos = n - 1 - i
        if i > 0 and pos % 2 == 0:
            assert (c.role, c.router_index) == ("cache", pos)
        else:
            assert (c.role, c.router_index) == ("full", None)
    assert plan.steps[-1].update.x == pytest.approx(1 / math.sqrt(alphas_cumprod("linear")[0]))


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 100), shifted=st.booleans())
def test_dpm_plan_invariants(k: int, shifted: bool) -> None:
    plan = dpm_solver2_plan(2 * k, shifted=shifted)
    ts = [c.timestep for c in plan.calls]
    assert all(a > b for a, b in itertools.pairwise(ts)) and ts[0] == 1000.0
    cache_rows = [c.router_index for c in plan.calls if c.role == "cache"]
    assert cache_rows == (list(range(1, k)) if shifted else list(range(k)))
    for step in plan.steps:
        # The midpoint input uses only x and the ε at s_k; the update needs both calls.
        assert [j for j, _ in step.calls[1].input.eps] == [step.calls[0].index]
        assert {j for j, _ in step.update.eps} == {c.index for c in step.calls}


# ---------------------------------------------------------------------------------------------
# DPM-Solver-2 with an odd number of model calls (issue 12, item 13)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nfe", [1, 3, 5, 21, 51])
def test_dpm_odd_nfe_ends_with_one_first_order_step(nfe: int) -> None:
    plan = dpm_solver2_plan(nfe)
    assert plan.nfe == nfe and [len(s.calls) for s in plan.steps] == [2] * (nfe // 2) + [1]
    # Outer times: the official grid for uneven orders, linspace(1, 1e-3, nfe + 1) at 0, 2, …, nfe.
    fine = torch.linspace(1.0, 1e-3, nfe + 1).tolist()
    outer = [s.calls[0].timestep for s in plan.steps]
    assert outer == pytest.approx([1000 * fine[i] for i in range(0, nfe, 2)], rel=1e-12)
    # Cadence: the closing call is a cache step (router row K-1) when shifted, full otherwise.
    k = nfe // 2
    last = plan.calls[-1]
    assert (last.role, last.router_index) == (("cache", k) if k >= 1 else ("full", None))
    assert roles(plan)[:-1] == roles(dpm_solver2_plan(nfe - 1))[: nfe - 1] if nfe > 1 else True
    unshifted = dpm_solver2_plan(nfe, shifted=False)
    assert (unshifted.calls[-1].role, unshifted.calls[-1].router_index) == ("full", None)
    assert [r for r, _ in roles(unshifted)].count("cache") == k


@pytest.mark.parametrize("nfe", [2, 3, 9, 10, 21])
def test_dpm_steps_and_coefficients_match_diffusers_singlestep(nfe: int) -> None:
    """diffusers' DPMSolverSinglestepScheduler, walked over our noise levels, is the oracle.

    Its order list decides which steps are second order and that an odd count ends with one
    first-order step; its update formulas (dpmsolver++ = data prediction, midpoint) then run on
    our sigmas, so every coefficient of our plan is checked, the closing step included.
    """
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DPMSolverSinglestepScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=nfe % 2 == 1,  # the official [2]*K for even counts; [.., 1] for odd
        final_sigmas_type="sigma_min",
    )
    sched.set_timesteps(nfe)
    # diffusers counts a second-order step as the pair (1, 2): the midpoint, then the update.
    assert sched.order_list == [1, 2] * (nfe // 2) + [1] * (nfe % 2)

    plan = dpm_solver2_plan(nfe)
    vp = DiscreteVP("scaled_linear")
    times = [c.timestep / 1000 for c in plan.calls] + [1e-3]  # every call's time, then the end
    alpha = np.exp(vp.marginal_log_mean_coeff(np.array(times, dtype=np.float64)))
    sched.sigmas = torch.tensor(np.sqrt(1 - alpha**2) / alpha, dtype=torch.float64)  # σ/α
    sched._step_index = 0

    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(nfe), dtype=torch.float64)
    x = x0
    for call in plan.calls:
        x = sched.step(wiggly_eps(call, x), call.timestep, x).prev_sample
    # (diffusers recovers λ from σ/α by logs: agreement to ~1e-9, a wrong coefficient is ~1e-2)
    torch.testing.assert_close(execute_plan(plan, x0, wiggly_eps), x, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("nfe", [3, 5, 21])
def test_dpm_odd_nfe_matches_published_update(nfe: int) -> None:
    """The closing step is DPM-Solver-1 in data prediction: x_t = σ_t/σ_s x − α_t φ1 x0(x, s)."""
    vp = DiscreteVP("scaled_linear")
    x0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    even = dpm_solver2_plan(nfe)
    # Run the second-order steps from the plan, then the closing step by hand.
    prefix = SamplerPlan(
        even.sampler, nfe - 1, even.steps[:-1], even.noise_schedule, even.time_input, even.options
    )
    x = execute_plan(prefix, x0, wiggly_eps)
    last = even.calls[-1]
    s, t = last.timestep / 1000, outer_grid(nfe)[-1]  # the grid's float32 1e-3
    h = float(vp.marginal_lambda(t) - vp.marginal_lambda(s))
    a_s, a_t = float(vp.marginal_alpha(s)), float(vp.marginal_alpha(t))
    sig_s, sig_t = float(vp.marginal_std(s)), float(vp.marginal_std(t))
    m = (x - sig_s * wiggly_eps(last, x)) / a_s
    want = (sig_t / sig_s) * x - a_t * math.expm1(-h) * m
    torch.testing.assert_close(execute_plan(even, x0, wiggly_eps), want, rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(k=st.integers(0, 60), shifted=st.booleans())
def test_dpm_odd_plan_invariants(k: int, shifted: bool) -> None:
    plan = dpm_solver2_plan(2 * k + 1, shifted=shifted)
    ts = [c.timestep for c in plan.calls]
    assert all(a > b for a, b in itertools.pairwise(ts)) and ts[0] == 1000.0
    cache_rows = [c.router_index for c in plan.calls if c.role == "cache"]
    assert cache_rows == (list(range(1, k + 1)) if shifted else list(range(k)))
    assert {j for j, _ in plan.steps[-1].update.eps} == {2 * k}
