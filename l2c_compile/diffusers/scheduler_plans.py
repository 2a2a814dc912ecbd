"""``pipeline_plan``: the trajectory a diffusers scheduler takes, as a static
:class:`~l2c_compile.samplers.base.SamplerPlan` the compiled sampler runs.

One builder per scheduler class (:data:`SCHEDULER_PLANS`), each making the plan from the
scheduler's own tables after ``set_timesteps`` and refusing, in one line, a setting that would make
the update non-linear: ``DDIMScheduler`` (η = 0), ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M)
and the flow-matching ``FlowMatchEulerDiscreteScheduler`` / ``UniPCMultistepScheduler``
(:mod:`~l2c_compile.diffusers.flow_schedulers`). Sources: diffusers ``DDIMScheduler.step``,
``DPMSolverMultistepScheduler.step``, ``FlowMatchEulerDiscreteScheduler.step``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from l2c_compile.diffusers.flow_schedulers import flow_scheduler_plan
from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import Combination, ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.ddim import ddim_role
from l2c_compile.samplers.dpm_solver_pp import dpm_solver_pp_from_sigmas
from l2c_compile.samplers.schedules import NOISE_SCHEDULES


def pipeline_plan(scheduler: Any, num_inference_steps: int, *, mu: float | None = None,
                  sigmas: Sequence[float] | None = None, time_input: str | None = None) -> SamplerPlan:
    """The trajectory ``scheduler`` (a diffusers ``DDIMScheduler``, η = 0, a
    ``DPMSolverMultistepScheduler`` running DPM-Solver++ 2M, or a flow-matching
    ``FlowMatchEulerDiscreteScheduler`` / ``UniPCMultistepScheduler`` with flow prediction) takes
    in ``num_inference_steps`` steps, as a plan with the DDIM cadence of L2C.

    DDIM: coefficients come from the scheduler's own ᾱ table and its own ``prev_timestep`` rule
    (``t − T // N``, ᾱ_prev = ``final_alpha_cumprod`` below 0). DPM-Solver++: from the
    scheduler's own ``timesteps`` and ``sigmas`` after ``set_timesteps``. Flow matching: likewise,
    after ``set_timesteps`` with the ``sigmas`` and ``mu`` the pipeline passes (FLUX);
    ``time_input`` "sigma_1000" (default) or "sigma" (see
    :func:`~l2c_compile.diffusers.flow_schedulers.flow_scheduler_plan`). L2CError for another
    scheduler or a setting that makes the update non-linear (clipping, thresholding, non-ε
    prediction on a VP scheduler, SDE variants, a third order).
    """
    _check_steps(num_inference_steps)
    build = next((b for cls, b in SCHEDULER_PLANS.items() if isinstance(scheduler, cls)), None)
    if build is None:
        names = ", ".join(cls.__name__ for cls in SCHEDULER_PLANS)
        raise L2CError(f"pipeline_plan supports the {names} (flow prediction), this pipeline has "
                       f"{type(scheduler).__name__}")
    return build(scheduler, num_inference_steps, mu=mu, sigmas=sigmas, time_input=time_input)


def _ddim_plan(scheduler: Any, num_inference_steps: int) -> SamplerPlan:
    """DDIM (η = 0) over the scheduler's own ᾱ table and ``prev_timestep`` rule (see
    :func:`pipeline_plan`)."""
    cfg = scheduler.config
    bad = [name for name, ok in (("clip_sample", not cfg.clip_sample), ("thresholding", not cfg.thresholding),
                                 ("prediction_type", cfg.prediction_type == "epsilon")) if not ok]
    if bad:
        raise L2CError(f"DDIMScheduler setting {bad[0]}={getattr(cfg, bad[0])!r} is not supported "
                       "(the compiled update must be linear in x and ε)")
    sched = copy.deepcopy(scheduler)
    try:
        sched.set_timesteps(num_inference_steps)
    except ValueError as exc:  # e.g. more steps than training timesteps
        raise L2CError(f"DDIMScheduler cannot take {num_inference_steps} steps: {exc}") from None
    ts = [int(t) for t in sched.timesteps]
    ac = [float(a) for a in sched.alphas_cumprod.double()]
    final = float(sched.final_alpha_cumprod)
    stride = cfg.num_train_timesteps // num_inference_steps
    n = len(ts)
    steps = []
    for i, t in enumerate(ts):
        ab, prev = ac[t], t - stride
        ab_prev = ac[prev] if prev >= 0 else final
        x_coef = math.sqrt(ab_prev) / math.sqrt(ab)
        eps_coef = math.sqrt(1.0 - ab_prev) - math.sqrt(ab_prev) * math.sqrt(1.0 - ab) / math.sqrt(ab)
        role, router_index = ddim_role(n - 1 - i, i)
        call = ModelCall(index=i, timestep=float(t), role=role, router_index=router_index)
        steps.append(SolverStep(calls=(call,), update=Combination(x_coef, ((i, eps_coef),))))
    # The coefficients come from the scheduler's own ᾱ; the plan's noise-schedule label names the
    # table for router training's q-sampling, and options keep what the scheduler actually used.
    schedule = cfg.beta_schedule if cfg.beta_schedule in NOISE_SCHEDULES else "linear"
    options = (("eta", 0.0), ("spacing", str(cfg.timestep_spacing)), ("scheduler", "DDIMScheduler"),
               ("beta_schedule", str(cfg.beta_schedule)))
    return SamplerPlan("ddim", n, tuple(steps), schedule, "discrete", options)


def _flow_plan(scheduler: Any, num_inference_steps: int, *, mu: float | None, sigmas: Sequence[float] | None,
               time_input: str | None) -> SamplerPlan:
    return flow_scheduler_plan(scheduler, num_inference_steps, mu=mu, sigmas=sigmas,
                               time_input=time_input or "sigma_1000")


def _vp_plan(build: Callable[[Any, int], SamplerPlan]) -> Callable[..., SamplerPlan]:
    """A VP (ε-prediction) scheduler's plan builder, refusing the flow-matching-only arguments."""

    def plan(scheduler: Any, num_inference_steps: int, *, mu: float | None, sigmas: Sequence[float] | None,
             time_input: str | None) -> SamplerPlan:
        if (mu, sigmas, time_input) != (None, None, None):
            raise L2CError("mu, sigmas and time_input apply to flow-matching schedulers, not "
                           f"{type(scheduler).__name__}")
        return build(scheduler, num_inference_steps)

    return plan


def _check_steps(num_inference_steps: object) -> None:
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise L2CError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")


# DPMSolverMultistepScheduler settings the compiled update follows exactly (anything else refused).
DPM_SETTINGS = {"algorithm_type": ("dpmsolver++",), "solver_order": (2,), "solver_type": ("midpoint",),
                "prediction_type": ("epsilon",), "thresholding": (False,), "variance_type": (None,)}


def _dpm_solver_pp_plan(scheduler: Any, num_inference_steps: int) -> SamplerPlan:
    """DPM-Solver++ 2M over the scheduler's own timesteps and σ (see :func:`pipeline_plan`)."""
    cfg = scheduler.config
    for name, ok in DPM_SETTINGS.items():
        if cfg.get(name) not in ok:
            raise L2CError(f"DPMSolverMultistepScheduler setting {name}={cfg.get(name)!r} is not supported "
                           f"(supported: {', '.join(map(repr, ok))}; the compiled update is DPM-Solver++ 2M)")
    sched = copy.deepcopy(scheduler)
    try:
        sched.set_timesteps(num_inference_steps)
    except ValueError as exc:
        raise L2CError(f"DPMSolverMultistepScheduler cannot take {num_inference_steps} steps: {exc}") from None
    ts = [int(t) for t in sched.timesteps]
    sigmas = [float(s) for s in sched.sigmas]
    n = len(ts)
    # The scheduler's own rule for the last step's order (step(): lower_order_final).
    final_first = bool(cfg.euler_at_final or (cfg.lower_order_final and n < 15) or cfg.final_sigmas_type == "zero")
    schedule = cfg.beta_schedule if cfg.beta_schedule in NOISE_SCHEDULES else "linear"
    options = (("spacing", str(cfg.timestep_spacing)), ("scheduler", "DPMSolverMultistepScheduler"),
               ("beta_schedule", str(cfg.beta_schedule)))
    return dpm_solver_pp_from_sigmas(ts, sigmas, noise_schedule=schedule, options=options,
                                     final_first_order=final_first)


# The diffusers schedulers whose trajectory is a static plan, and how each plan is made: a new
# scheduler is one entry here (its builder checks the settings that keep the update linear).
SCHEDULER_PLANS: dict[type, Callable[..., SamplerPlan]] = {
    DDIMScheduler: _vp_plan(_ddim_plan),
    DPMSolverMultistepScheduler: _vp_plan(_dpm_solver_pp_plan),
    FlowMatchEulerDiscreteScheduler: _flow_plan,
    UniPCMultistepScheduler: _flow_plan,
}
