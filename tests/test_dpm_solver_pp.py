"""DPM-Solver++ 2M (sampler ``dpm-solver++``, PixArt's) against diffusers'
``DPMSolverMultistepScheduler``, step for step, in float64."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import DPMSolverMultistepScheduler

from l2c_compile.diffusers import pipeline_plan
from l2c_compile.errors import L2CError
from l2c_compile.samplers import execute_plan, make_plan
from tests.helpers import rel_error


def _diffusers_steps(sched, x, outs):
    states = []
    for i, t in enumerate(sched.timesteps):
        x = sched.step(outs[i], t, x).prev_sample
        states.append(x)
    return states


def _plan_steps(plan, x, outs):
    """The plan's states after every step (execute_plan's loop, one step at a time)."""
    eps, states = {}, []
    for step in plan.steps:
        for call in step.calls:
            eps[call.index] = call.output.apply(
                call.input.apply(x, eps), {call.index: outs[call.index]}
            )
        x = step.update.apply(x, eps)
        states.append(x)
    return states


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
@pytest.mark.parametrize("nfe", [1, 2, 3, 8, 14, 15, 20])
def test_dpm_solver_pp_matches_diffusers_step_for_step(schedule, nfe):
    start, end = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}[schedule]
    sched = DPMSolverMultistepScheduler(beta_schedule=schedule, beta_start=start, beta_end=end)
    sched.set_timesteps(nfe)
    plan = make_plan("dpm-solver++", nfe, noise_schedule=schedule)
    assert [c.timestep for c in plan.calls] == [float(t) for t in sched.timesteps]
    sched.sigmas = (
        sched.sigmas.double()
    )  # compare the coefficients in float64, not float32 arithmetic
    g = torch.Generator().manual_seed(nfe)
    x = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64)
    outs = [torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(nfe)]
    for i, (mine, want) in enumerate(
        zip(_plan_steps(plan, x, outs), _diffusers_steps(sched, x, outs), strict=True)
    ):
        assert rel_error(mine, want) <= 1e-6, f"step {i}"
    assert rel_error(execute_plan(plan, x, lambda call, _: outs[call.index]), want) <= 1e-6


def test_dpm_solver_pp_cadence_and_the_schedulers_own_settings():
    plan = make_plan("dpm-solver++", 10)
    ddim = make_plan("ddim", 10)  # one call per step: DDIM's cadence of full and cache steps
    assert [(c.role, c.router_index) for c in plan.calls] == [
        (c.role, c.router_index) for c in ddim.calls
    ]
    # final_sigmas_type="sigma_min" with 20 steps: the last step stays second order
    sched = DPMSolverMultistepScheduler(beta_schedule="linear", final_sigmas_type="sigma_min")
    plan = pipeline_plan(sched, 20)
    sched.set_timesteps(20)
    sched.sigmas = sched.sigmas.double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64)
    outs = [torch.randn(1, 4, 4, 4, generator=g, dtype=torch.float64) for _ in range(20)]
    assert len(plan.steps[-1].update.eps) == 2
    assert rel_error(_plan_steps(plan, x, outs)[-1], _diffusers_steps(sched, x, outs)[-1]) <= 1e-6
    with pytest.raises(L2CError, match="algorithm_type='dpmsolver' is not supported"):
        pipeline_plan(
            DPMSolverMultistepScheduler(algorithm_type="dpmsolver", final_sigmas_type="sigma_min"),
            10,
        )
