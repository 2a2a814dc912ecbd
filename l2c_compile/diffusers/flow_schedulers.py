"""Plans from diffusers' flow-matching schedulers, as ``pipeline_plan`` makes them.

``FlowMatchEulerDiscreteScheduler`` (SD3, FLUX.1, Wan) → ``flow-euler``;
``UniPCMultistepScheduler`` with ``prediction_type="flow_prediction"`` and ``use_flow_sigmas``
(Wan) → ``unipc-flow``. The coefficients come from the scheduler's own timesteps and σ after
``set_timesteps`` (with the ``sigmas`` and ``mu`` its pipeline passes: FLUX's
``linspace(1, 1/N, N)`` and its resolution-dependent μ), so any σ setting the scheduler has
(Karras, a terminal shift, …) is followed; settings that make a step non-linear are refused.
``compile_pipeline`` runs them for ``StableDiffusion3Pipeline`` and ``FluxPipeline``; the Wan
pipeline is not compiled yet.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.samplers.flow_match import flow_euler_from_sigmas
from l2c_compile.samplers.unipc import SOLVER_ORDER, unipc_flow_from_sigmas

# UniPCMultistepScheduler settings the unipc-flow plan follows exactly (anything else refused).
UNIPC_SETTINGS = {"prediction_type": ("flow_prediction",), "use_flow_sigmas": (True,),
                  "solver_order": (SOLVER_ORDER,), "solver_type": ("bh2",), "predict_x0": (True,),
                  "lower_order_final": (True,), "thresholding": (False,), "final_sigmas_type": ("zero",),
                  "solver_p": (None,)}
# FlowMatchEulerDiscreteScheduler settings that change σ only: recorded in the plan's options.
EULER_SIGMA_SETTINGS = {"shift_terminal": None, "use_karras_sigmas": False, "use_exponential_sigmas": False,
                        "use_beta_sigmas": False, "time_shift_type": "exponential"}


def is_flow_scheduler(scheduler: Any) -> bool:
    """Whether ``scheduler`` is one of the flow-matching schedulers ``pipeline_plan`` maps."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
        return True
    return isinstance(scheduler, UniPCMultistepScheduler) and scheduler.config.prediction_type == "flow_prediction"


def flow_scheduler_plan(scheduler: Any, num_inference_steps: int, *, mu: float | None = None,
                        sigmas: Sequence[float] | None = None, time_input: str = "sigma_1000") -> SamplerPlan:
    """The plan of a flow-matching ``scheduler`` for ``num_inference_steps`` steps, ``sigmas`` and
    ``mu`` passed to ``set_timesteps`` as the pipeline passes them; ``time_input``: "sigma_1000"
    (SD3, Wan) or "sigma" (FLUX, which hands its transformer ``timestep / 1000``)."""
    name = type(scheduler).__name__
    cfg = scheduler.config
    if isinstance(scheduler, UniPCMultistepScheduler):
        for key, ok in UNIPC_SETTINGS.items():
            if cfg.get(key) not in ok:
                raise L2CError(f"{name} setting {key}={cfg.get(key)!r} is not supported (supported: "
                               f"{', '.join(map(repr, ok))}; the compiled update is UniPC-2 bh2 with flow prediction)")
        if list(cfg.disable_corrector or []):
            raise L2CError(f"{name} setting disable_corrector={cfg.disable_corrector!r} is not supported")
    else:
        for key in ("stochastic_sampling", "invert_sigmas"):
            if cfg.get(key):
                raise L2CError(f"{name} setting {key}=True is not supported (the compiled update is the "
                               "deterministic Euler step toward σ = 0)")
    if cfg.get("use_dynamic_shifting") and mu is None:
        raise L2CError(f"{name} shifts dynamically: pass mu (FluxPipeline computes it from the image sequence "
                       "length, samplers.dynamic_shift_mu)")
    sched = copy.deepcopy(scheduler)
    kwargs: dict[str, Any] = {"mu": mu} if cfg.get("use_dynamic_shifting") else {}
    try:
        if sigmas is not None:
            sched.set_timesteps(sigmas=list(sigmas), **kwargs)
        else:
            sched.set_timesteps(num_inference_steps, **kwargs)
    except ValueError as exc:
        raise L2CError(f"{name} cannot take {num_inference_steps} steps: {exc}") from None
    ts = [float(t) for t in sched.timesteps]
    if len(ts) != num_inference_steps:
        raise L2CError(f"{name}: {len(ts)} sigmas given for {num_inference_steps} steps")
    sig = [float(s) for s in sched.sigmas]
    shift = float(cfg.flow_shift if isinstance(scheduler, UniPCMultistepScheduler) else sched.shift)
    applied_mu = float(mu) if cfg.get("use_dynamic_shifting") else None  # the scheduler ignores it otherwise
    options: tuple[tuple[str, object], ...] = (("shift", shift), ("mu", applied_mu))
    if isinstance(scheduler, UniPCMultistepScheduler):
        return unipc_flow_from_sigmas(ts, sig, time_input=time_input, options=options)
    options += (("spacing", _spacing(sigmas, num_inference_steps)),)
    options += tuple((k, cfg.get(k)) for k, default in EULER_SIGMA_SETTINGS.items() if cfg.get(k) != default)
    return flow_euler_from_sigmas(ts, sig, time_input=time_input, options=options)


def _spacing(sigmas: Sequence[float] | None, n: int) -> str:
    """The flow-euler ``spacing`` the pipeline's ``sigmas`` amount to."""
    if sigmas is None:
        return "scheduler"
    if np.array_equal(np.asarray(sigmas, dtype=np.float64), np.linspace(1.0, 1 / n, n)):
        return "flux"
    return "custom"
