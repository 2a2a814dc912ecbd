"""Samplers as static plans: ``make_plan("ddim", 20)`` → a :class:`SamplerPlan`.

A plan holds every model call's timestep, its L2C role (full / cache, router row) and the scalar
coefficients of every update, so both executors (reference and compiled) walk the same data.
``ddim``, ``dpm-solver-2`` and ``dpm-solver++`` sample ε-prediction models on a VP β table;
``flow-euler`` and ``unipc-flow`` sample flow-matching (velocity-prediction) models, whose
model spec names the noise schedule ``"flow"``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from l2c_compile.errors import L2CError, suggest
from l2c_compile.limits import MAX_NFE
from l2c_compile.samplers.base import (
    Combination,
    EpsFn,
    LinearForm,
    ModelCall,
    Role,
    SamplerPlan,
    SolverStep,
    execute_plan,
)
from l2c_compile.samplers.ddim import ddim_plan
from l2c_compile.samplers.dpm_solver import dpm_solver2_plan
from l2c_compile.samplers.dpm_solver_pp import dpm_solver_pp_plan
from l2c_compile.samplers.flow_match import FLOW_TIME_INPUTS, dynamic_shift_mu, flow_euler_plan
from l2c_compile.samplers.schedules import FLOW_SCHEDULE, NOISE_SCHEDULES, TIME_INPUTS
from l2c_compile.samplers.unipc import unipc_flow_plan

SAMPLERS = ("ddim", "dpm-solver-2", "dpm-solver++", "flow-euler", "unipc-flow")

_FACTORIES: dict[str, Callable[..., SamplerPlan]] = {
    "ddim": ddim_plan,
    "dpm-solver-2": dpm_solver2_plan,
    "dpm-solver++": dpm_solver_pp_plan,
    "flow-euler": flow_euler_plan,
    "unipc-flow": unipc_flow_plan,
}

__all__ = [
    "FLOW_SCHEDULE",
    "FLOW_TIME_INPUTS",
    "NOISE_SCHEDULES",
    "SAMPLERS",
    "TIME_INPUTS",
    "Combination",
    "EpsFn",
    "LinearForm",
    "ModelCall",
    "Role",
    "SamplerPlan",
    "SolverStep",
    "ddim_plan",
    "dpm_solver2_plan",
    "dpm_solver_pp_plan",
    "dynamic_shift_mu",
    "execute_plan",
    "flow_euler_plan",
    "make_plan",
    "sampler_options",
    "unipc_flow_plan",
]


def sampler_options(name: str) -> tuple[str, ...]:
    """The sampler-specific keyword options ``make_plan`` accepts for ``name`` (e.g. "shifted")."""
    factory = _factory(name)
    common = {"nfe", "noise_schedule", "time_input"}
    return tuple(p for p in inspect.signature(factory).parameters if p not in common)


def _factory(name: str) -> Callable[..., SamplerPlan]:
    if name not in _FACTORIES:
        raise L2CError(
            f"unknown sampler {name!r}{suggest(str(name), SAMPLERS)}; choose one of {', '.join(SAMPLERS)}"
        )
    return _FACTORIES[name]


def make_plan(
    name: str,
    nfe: int,
    *,
    noise_schedule: str | None = None,
    time_input: str | None = None,
    **options: object,
) -> SamplerPlan:
    """Build the plan of sampler ``name`` with ``nfe`` model calls.

    ``noise_schedule`` / ``time_input`` default to the sampler's own (DDIM: linear, discrete;
    DPM-Solver-2: scaled_linear, continuous; the flow samplers: flow, sigma_1000). Unknown names, options or impossible NFEs raise
    :class:`L2CError`. The options used end up in ``plan.options`` (and so in the manifest).
    """
    factory = _factory(name)
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise L2CError(f"nfe must be a positive integer, got {nfe!r}")
    if nfe > MAX_NFE:  # checked before any plan is built: a file may say 10**7
        raise L2CError(f"{name} cannot take {nfe} model calls: at most {MAX_NFE} (the training timesteps)")
    allowed = sampler_options(name)
    for key in options:
        if key not in allowed:
            hint = suggest(key, allowed) if allowed else ""
            raise L2CError(f"sampler {name!r} has no option {key!r}{hint}")
    kwargs: dict[str, object] = dict(options)
    if noise_schedule is not None:
        kwargs["noise_schedule"] = noise_schedule
    if time_input is not None:
        kwargs["time_input"] = time_input
    return factory(nfe, **kwargs)
