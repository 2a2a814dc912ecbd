"""Flow-matching plans (``flow-euler``, ``unipc-flow``) against diffusers'
``FlowMatchEulerDiscreteScheduler`` and ``UniPCMultistepScheduler``, step for step, in float64;
and the VP plans pinned as they were before flow matching came in."""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.diffusers import pipeline_plan
from l2c_compile.errors import L2CError
from l2c_compile.router import cache_targets
from l2c_compile.runtime.artifact import plan_from_manifest
from l2c_compile.samplers import dynamic_shift_mu, execute_plan, make_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit

TOL = 1e-10
# FLUX.1's scheduler config (dynamic shifting between 256 and 4096 latent tokens)
FLUX_CONFIG = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
               "base_image_seq_len": 256, "max_image_seq_len": 4096}
WAN_CONFIG = {"prediction_type": "flow_prediction", "use_flow_sigmas": True}  # + flow_shift


def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """A fixed fake velocity model: nonlinear in x, depends on the timestep it is handed (bounded
    in t, so σ·1000 and σ conventions alike)."""
    return torch.tanh(x) * (1.0 + 0.5 * np.sin(t)) - 0.3 * x + 0.05 * np.cos(t)


def _euler_scheduler(case: str, n: int, arg: float) -> tuple[FlowMatchEulerDiscreteScheduler, dict]:
    """diffusers' scheduler after set_timesteps as the pipeline calls it, and make_plan's options."""
    if case == "sd3":  # StableDiffusion3Pipeline: set_timesteps(N) on a statically shifted scheduler
        sched = FlowMatchEulerDiscreteScheduler(shift=arg)
        sched.set_timesteps(n)
        return sched, {"shift": arg}
    # FluxPipeline: sigmas = linspace(1, 1/N, N), mu from the image sequence length (arg)
    sched = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    mu = calculate_shift(int(arg), 256, 4096, 0.5, 1.15)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return sched, {"shift": 3.0, "mu": mu, "spacing": "flux", "time_input": "sigma"}


def _walk(plan, x: torch.Tensor, model, round_state: bool = False) -> list[torch.Tensor]:
    """The plan's states after every step (execute_plan's loop, one step at a time);
    ``round_state``: hand each update a float32-rounded state, as diffusers' Euler step does."""
    eps, states = {}, []
    for step in plan.steps:
        for call in step.calls:
            x_in = call.input.apply(x, eps)
            eps[call.index] = model(x_in, call.timestep)
            if call.output is not None:
                eps[call.index] = call.output.apply(x_in, eps)
        x = step.update.apply(x.float().double() if round_state else x, eps)
        states.append(x)
    return states


@pytest.mark.parametrize(
    ("case", "arg"),
    [("sd3", 1.0), ("sd3", 3.0), ("flux", 1024), ("flux", 4096)],  # FLUX at 512² and 1024²: μ moves
)
@pytest.mark.parametrize("n", [1, 4, 7, 28])
def test_flow_euler_matches_diffusers_step_for_step(case, arg, n):
    sched, options = _euler_scheduler(case, n, arg)
    plan = make_plan("flow-euler", n, **options)
    assert [c.sigma for c in plan.calls] + [0.0] == sched.sigmas.tolist()
    # the value the transformer receives: SD3 the scheduler's timestep, FLUX timestep / 1000
    given = sched.timesteps / 1000 if case == "flux" else sched.timesteps
    assert [c.timestep for c in plan.calls] == given.tolist()
    sched.sigmas = sched.sigmas.double()  # compare the coefficients in float64, not float32 arithmetic
    x0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    want, x = [], x0
    for t, model_t in zip(sched.timesteps, given.tolist(), strict=True):
        x = sched.step(velocity(x, model_t), t, x).prev_sample  # (casts the sample to float32 first)
        want.append(x)
    for i, (mine, theirs) in enumerate(zip(_walk(plan, x0, velocity, round_state=True), want, strict=True)):
        assert rel_error(mine, theirs) <= TOL, f"step {i}"
    # without the float32 rounding, the executor differs from diffusers by that rounding only
    assert rel_error(execute_plan(plan, x0, lambda c, s: velocity(s, c.timestep)), want[-1]) <= 1e-6


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 28])
def test_unipc_flow_matches_diffusers_step_for_step(shift, n):
    sched = UniPCMultistepScheduler(**WAN_CONFIG, flow_shift=shift)  # WanPipeline: set_timesteps(N)
    sched.set_timesteps(n)
    plan = make_plan("unipc-flow", n, shift=shift)
    assert [c.timestep for c in plan.calls] == [float(t) for t in sched.timesteps]
    assert [c.sigma for c in plan.calls] + [0.0] == sched.sigmas.tolist()
    sched.sigmas = sched.sigmas.double()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    want, state = [], x
    for t in sched.timesteps:
        state = sched.step(velocity(state, float(t)), t, state).prev_sample
        want.append(state)
    for i, (mine, theirs) in enumerate(zip(_walk(plan, x, velocity), want, strict=True)):
        assert rel_error(mine, theirs) <= TOL, f"step {i}"
    assert rel_error(execute_plan(plan, x, lambda c, s: velocity(s, c.timestep)), want[-1]) <= TOL


def test_pipeline_plan_maps_the_flow_schedulers_and_plans_round_trip():
    n = 9
    sd3 = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert pipeline_plan(sd3, n) == make_plan("flow-euler", n, shift=3.0)
    flux = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    mu = dynamic_shift_mu(4096)
    assert mu == calculate_shift(4096, 256, 4096, 0.5, 1.15)
    plan = pipeline_plan(flux, n, mu=mu, sigmas=np.linspace(1.0, 1 / n, n), time_input="sigma")
    assert plan == make_plan("flow-euler", n, shift=3.0, mu=mu, spacing="flux", time_input="sigma")
    wan = UniPCMultistepScheduler(**WAN_CONFIG, flow_shift=5.0)
    assert pipeline_plan(wan, n) == make_plan("unipc-flow", n, shift=5.0)
    for p in (plan, pipeline_plan(wan, n)):
        record = json.loads(json.dumps(p.describe()))
        assert record["prediction"] == "velocity" and record["calls"][0]["sigma"] == p.calls[0].sigma
        assert plan_from_manifest(record) == p
    # the scheduler's own σ settings are followed: Karras σ with a Wan-style shift
    karras = FlowMatchEulerDiscreteScheduler(shift=3.0, use_karras_sigmas=True)
    kplan = pipeline_plan(karras, n)
    karras.set_timesteps(n)
    assert [c.sigma for c in kplan.calls] + [0.0] == karras.sigmas.tolist()
    assert dict(kplan.options)["use_karras_sigmas"] is True


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_plan("flow-euler", 8, noise_schedule="linear"), "samples flow-matching models"),
        (lambda: make_plan("unipc-flow", 8, time_input="discrete"), "unknown flow time input"),
        (lambda: make_plan("flow-euler", 8, spacing="fluxx"), "did you mean 'flux'"),
        (lambda: make_plan("flow-euler", 8, shift=0.0), "positive number"),
        (lambda: make_plan("unipc-flow", 1001), "at most 1000"),
        (lambda: make_plan("ddim", 8, noise_schedule="flow"), "unknown noise schedule 'flow'"),
        (lambda: pipeline_plan(FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG), 8), "pass mu"),
        (lambda: pipeline_plan(FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), 8), "stochastic"),
        (lambda: pipeline_plan(UniPCMultistepScheduler(**WAN_CONFIG, solver_order=3), 8), "solver_order=3"),
        (lambda: pipeline_plan(UniPCMultistepScheduler(**WAN_CONFIG, disable_corrector=[0]), 8), "disable_corr"),
        (lambda: pipeline_plan(DPMSolverMultistepScheduler(), 8, mu=0.5), "apply to flow-matching"),
    ],
)
def test_bad_flow_settings_are_one_clear_error(call, match):
    with pytest.raises(L2CError, match=match):
        call()


def test_router_training_noises_to_the_flow_state_and_restarts_first_order():
    plan = make_plan("unipc-flow", 6, shift=3.0)
    targets = cache_targets(plan)
    assert [t.row for t in targets] == [4, 2, 0]  # DDIM's cadence: one call per step
    for t in targets:
        sigma = t.warm[0].sigma
        assert t.noise_level == (1.0 - sigma, sigma)
    # the first step has no history; later ones read earlier steps' predictions (and correct
    # with them), so training, which starts there, takes the first-order predictor instead
    assert targets[0].step.restart is None and targets[0].update is targets[0].step.update
    for t in targets[1:]:
        assert len(t.step.update.eps) == 3 and t.update == t.step.restart
        assert [j for j, _ in t.update.eps] == [t.warm[0].index]
    first = cache_targets(make_plan("flow-euler", 6))[0]
    assert first.update is first.step.update and first.noise_level[1] == first.warm[0].sigma


def test_velocity_plans_compile_exactly_and_load(tmp_path):
    model = tiny_dit(1)
    plan = make_plan("unipc-flow", 4, shift=3.0)
    sched = random_schedule(plan, 2, random.Random(1), 0.6)
    info = {"name": "tiny", "family": "dit", "kwargs": {  # tiny_dit's config, so load can rebuild it
        "input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 2, "num_heads": 2,
        "num_classes": 5, "learn_sigma": True}}
    compiled = l2c_compile.compile(model, plan, sched, cfg=False, model_info=info)
    noise, labels = inputs(model, 2, 1)
    want = reference.sample(model, plan, sched, noise, labels, None)
    assert rel_error(compiled(noise, labels, None), want) <= 1e-5
    compiled.save(tmp_path / "art")
    loaded = l2c_compile.load(tmp_path / "art")
    assert rel_error(loaded(noise, labels, None), want) <= 1e-5


# The VP plans as they were before the flow samplers came in (commit eacbdf1): every call, every
# coefficient, every restart and the manifest summary, one repr per plan, written by running
# _vp_plan_reprs at that commit. Floats are compared to 1e-9 relative (the last bits of the
# schedules' float64 math differ between CPUs, so neither an exact nor a rounded hash holds across
# machines); everything else must match exactly.
VP_PLANS = Path(__file__).parent / "data" / "vp_plans_eacbdf1.json.gz"
FLOAT = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _vp_plan_reprs() -> list[str]:
    reprs = []
    for name, opts in [("ddim", {}), ("dpm-solver-2", {}), ("dpm-solver-2", {"shifted": False}), ("dpm-solver++", {})]:
        for schedule in ("linear", "scaled_linear"):
            for time_input in ("discrete", "continuous"):
                for nfe in (1, 2, 3, 7, 10, 20, 25, 50):
                    p = make_plan(name, nfe, noise_schedule=schedule, time_input=time_input, **opts)
                    data = [p.sampler, p.nfe, p.noise_schedule, p.time_input, p.options, json.dumps(p.describe())]
                    for s in p.steps:
                        data.append((s.update, s.restart))
                        data += [(c.index, c.timestep, c.role, c.router_index, c.input, c.output) for c in s.calls]
                    reprs.append(repr(data))
    return reprs


def test_vp_plans_are_unchanged():
    golden = json.loads(gzip.decompress(VP_PLANS.read_bytes()))
    got = _vp_plan_reprs()
    for have, want in zip(got, golden, strict=True):
        assert FLOAT.split(have) == FLOAT.split(want)  # the structure, names and integers
        have_f = np.array([float(x) for x in FLOAT.findall(have)])
        want_f = np.array([float(x) for x in FLOAT.findall(want)])
        np.testing.assert_allclose(have_f, want_f, rtol=1e-9, atol=1e-12)
