"""Flow-matching Euler as a SamplerPlan: diffusers' ``FlowMatchEulerDiscreteScheduler`` as the
SD3, FLUX.1 and Wan pipelines drive it.

The model predicts the velocity ``v = ε − x0`` of ``x_σ = (1 − σ)·x0 + σ·ε`` (``plan.prediction
== "velocity"``, ``noise_schedule == "flow"``). Step i moves from σ_i to σ_{i+1}::

    x_{i+1} = x_i + (σ_{i+1} − σ_i) · v_i          σ_N = 0 after the last step

linear in the state and the model output, so the trajectory is one call per step with the
coefficients ``(1, σ_{i+1} − σ_i)`` (float64, from the scheduler's float32 σ). Every call
carries its σ, which router training uses to noise x0 straight to a step's start.

σ schedule of N steps, as ``set_timesteps`` computes it:

* ``spacing="scheduler"`` (SD3, Wan: ``set_timesteps(N)``): N values spaced linearly in σ·1000
  from the scheduler's σ_max to its σ_min, the two ends of its 1000-entry training table (float32;
  without dynamic shifting that table is already shifted, so σ_min = shift(1/1000)).
* ``spacing="flux"`` (``FluxPipeline``): the pipeline's ``sigmas = linspace(1, 1/N, N)``, which
  the scheduler rounds to float32 before shifting.

then the shift: static, ``shift·σ / (1 + (shift − 1)·σ)`` (SD3: 3.0), or with ``mu`` the dynamic,
resolution-dependent exponential time shift ``e^μ / (e^μ + (1/σ − 1))`` (FLUX; the pipeline takes
μ from the image sequence length, :func:`dynamic_shift_mu`). σ is then rounded to float32, the
scheduler's timestep is ``σ·1000`` in float32, and a final σ = 0 closes the schedule. The shift
runs in the precision of its input (float64 for "scheduler", float32 for "flux"), as it does in
diffusers.

Model timestep: ``time_input="sigma_1000"`` passes the scheduler's timestep (SD3's and Wan's
transformers take it as is); ``"sigma"`` passes ``timestep / 1000`` in float32, as
``FluxPipeline`` does (its transformer multiplies by 1000 again; a bf16 pipeline rounds the
timestep to bf16 first, which is its adapter's concern, not the plan's).

Cadence: one model call per step, so DDIM's (the first call full, then a cache step between full
steps). Checked step for step against diffusers (tests/test_flow_match.py). Source: diffusers
``schedulers/scheduling_flow_match_euler_discrete.py`` (``__init__``, ``set_timesteps``,
``time_shift``, ``step``), ``pipelines/flux/pipeline_flux.py`` (``calculate_shift``, ``__call__``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from l2c_compile.errors import L2CError, suggest
from l2c_compile.samplers.base import Combination, ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.ddim import ddim_role
from l2c_compile.samplers.schedules import FLOW_SCHEDULE, NUM_TRAIN_STEPS

SAMPLER = "flow-euler"
FLOW_TIME_INPUTS = ("sigma_1000", "sigma")  # the scheduler's timestep σ·1000 | that / 1000 (FLUX)
SPACINGS = ("scheduler", "flux")


def dynamic_shift_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """μ of FLUX's dynamic shift for ``image_seq_len`` latent tokens: the line through
    (base_seq_len, base_shift) and (max_seq_len, max_shift), as the pipelines' ``calculate_shift``
    evaluates it (FLUX.1: (H/16)·(W/16) tokens for an H×W image)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    intercept = base_shift - slope * base_seq_len
    return image_seq_len * slope + intercept


def check_flow_inputs(sampler: str, noise_schedule: str, time_input: str) -> None:
    """L2CError unless the plan is for a flow-matching model with a known time convention."""
    if noise_schedule != FLOW_SCHEDULE:
        raise L2CError(
            f"{sampler} samples flow-matching models (velocity prediction, noise schedule "
            f"{FLOW_SCHEDULE!r}); this model uses the {noise_schedule!r} schedule"
        )
    if time_input not in FLOW_TIME_INPUTS:
        raise L2CError(
            f"unknown flow time input {time_input!r}{suggest(str(time_input), FLOW_TIME_INPUTS)}; "
            f"choose one of {', '.join(FLOW_TIME_INPUTS)}"
        )


def check_steps(sampler: str, nfe: object) -> int:
    """``nfe`` if it is a usable number of steps (1..1000), else L2CError."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or not 1 <= nfe <= NUM_TRAIN_STEPS:
        raise L2CError(f"{sampler} takes 1..{NUM_TRAIN_STEPS} steps, got {nfe!r}")
    return nfe


def static_shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """``shift·σ / (1 + (shift − 1)·σ)`` in the precision of ``sigmas`` (SD3's and Wan's shift)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def exponential_time_shift(sigmas: np.ndarray, mu: float) -> np.ndarray:
    """``e^μ / (e^μ + (1/σ − 1))`` in the precision of ``sigmas`` (FLUX's dynamic shift)."""
    e_mu = math.exp(mu)
    return e_mu / (e_mu + (1 / sigmas - 1))


def _table_ends(shift: float, dynamic: bool) -> tuple[float, float]:
    """(σ_max, σ_min): the first and last entries of the scheduler's float32 training table
    (``timesteps 1000..1 / 1000``, statically shifted unless the shift is dynamic)."""
    ends = torch.tensor([float(NUM_TRAIN_STEPS), 1.0], dtype=torch.float32) / NUM_TRAIN_STEPS
    if not dynamic:
        ends = shift * ends / (1 + (shift - 1) * ends)  # float32, as the table is built
    return float(ends[0]), float(ends[1])


def flow_sigmas(
    nfe: int, *, shift: float = 1.0, mu: float | None = None, spacing: str = "scheduler"
) -> tuple[list[float], list[float]]:
    """(N timesteps, N + 1 σ) of ``set_timesteps`` for N = ``nfe`` (see the module docstring):
    float32 values as Python floats, the last σ 0."""
    if spacing == "flux":
        base = np.linspace(1.0, 1 / nfe, nfe).astype(np.float32)
    else:
        sigma_max, sigma_min = _table_ends(shift, mu is not None)
        base = np.linspace(sigma_max * NUM_TRAIN_STEPS, sigma_min * NUM_TRAIN_STEPS, nfe) / NUM_TRAIN_STEPS
    shifted = exponential_time_shift(base, mu) if mu is not None else static_shift(base, shift)
    sigmas = torch.from_numpy(np.asarray(shifted)).to(torch.float32)  # (N,)
    timesteps = sigmas * NUM_TRAIN_STEPS  # (N,) float32
    return [float(t) for t in timesteps], [*(float(s) for s in sigmas), 0.0]


def model_timestep(timestep: float, time_input: str) -> float:
    """The value the network receives for the scheduler's ``timestep`` (float32 arithmetic)."""
    if time_input == "sigma":
        return float(np.float32(timestep) / np.float32(NUM_TRAIN_STEPS))
    return float(timestep)


def check_sigmas(sampler: str, timesteps: Sequence[float], sigmas: Sequence[float]) -> list[float]:
    """``sigmas`` as floats: N + 1 for N timesteps, in (0, 1] and decreasing, the last ≥ 0."""
    n = len(timesteps)
    sig = [float(s) for s in sigmas]
    if n < 1 or len(sig) != n + 1:
        raise L2CError(f"{sampler} needs N timesteps and N + 1 sigmas, got {n} and {len(sig)}")
    if any(not math.isfinite(s) or not 0 < s <= 1 for s in sig[:-1]) or not 0 <= sig[-1] < sig[-2]:
        raise L2CError(f"{sampler} sigmas must lie in (0, 1], the last in [0, 1)")
    return sig


def flow_euler_from_sigmas(
    timesteps: Sequence[float],
    sigmas: Sequence[float],
    *,
    time_input: str = "sigma_1000",
    options: tuple[tuple[str, object], ...] = (),
) -> SamplerPlan:
    """The Euler plan over the scheduler's ``timesteps`` (N) and ``sigmas`` (N + 1, the last the σ
    after the final step), coefficients in float64. L2CError for inconsistent inputs."""
    check_flow_inputs(SAMPLER, FLOW_SCHEDULE, time_input)
    sig = check_sigmas(SAMPLER, timesteps, sigmas)
    n = len(timesteps)
    steps = []
    for i, t in enumerate(timesteps):
        role, row = ddim_role(n - 1 - i, i)
        call = ModelCall(i, model_timestep(t, time_input), role, row, sigma=sig[i])
        steps.append(SolverStep(calls=(call,), update=Combination(1.0, ((i, sig[i + 1] - sig[i]),))))
    return SamplerPlan(SAMPLER, n, tuple(steps), FLOW_SCHEDULE, time_input, options, prediction="velocity")


def flow_euler_plan(
    nfe: int,
    *,
    noise_schedule: str = FLOW_SCHEDULE,
    time_input: str = "sigma_1000",
    shift: float = 1.0,
    mu: float | None = None,
    spacing: str = "scheduler",
) -> SamplerPlan:
    """Flow-matching Euler with ``nfe`` steps, σ as ``FlowMatchEulerDiscreteScheduler`` sets them.

    SD3: ``shift=3.0``; FLUX.1: ``mu=dynamic_shift_mu(image_seq_len)``, ``spacing="flux"``,
    ``time_input="sigma"``; Wan: ``shift`` = the pipeline's flow shift. ``mu`` (dynamic shifting)
    replaces ``shift``. L2CError for a bad option, NFE or model convention.
    """
    check_flow_inputs(SAMPLER, noise_schedule, time_input)
    check_steps(SAMPLER, nfe)
    shift, mu = check_shift(shift, mu)
    if spacing not in SPACINGS:
        raise L2CError(f"unknown flow-euler spacing {spacing!r}{suggest(str(spacing), SPACINGS)}; "
                       f"choose one of {', '.join(SPACINGS)}")
    timesteps, sigmas = flow_sigmas(nfe, shift=shift, mu=mu, spacing=spacing)
    options = (("shift", shift), ("mu", mu), ("spacing", spacing))
    return flow_euler_from_sigmas(timesteps, sigmas, time_input=time_input, options=options)


def check_shift(shift: object, mu: object) -> tuple[float, float | None]:
    """(shift, mu) as floats: a positive static shift and a finite μ or None; else L2CError."""
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0 < shift < math.inf:
        raise L2CError(f"flow shift must be a positive number, got {shift!r}")
    if mu is not None and (isinstance(mu, bool) or not isinstance(mu, int | float) or not math.isfinite(mu)):
        raise L2CError(f"flow mu must be a finite number or None, got {mu!r}")
    return float(shift), None if mu is None else float(mu)
