"""DDIM (η = 0) as a SamplerPlan, respaced like the official DiT / guided-diffusion code.

Timesteps: ``space_timesteps(1000, "N")`` keeps ``round(k · 999/(N−1))`` with the stride
*accumulated* in a float, which for some N (21, 23, 31, …) lands one step below diffusers'
``linspace(0, 999, N).round()``; the official rule wins (spec §4.2).

Update (``clip_denoised=False``), from ᾱ = ᾱ_t to ᾱ' = ᾱ of the next kept step (1 after the last)::

    x' = sqrt(ᾱ')/sqrt(ᾱ) · x + (sqrt(1 − ᾱ') − sqrt(ᾱ') · sqrt(1/ᾱ − 1)) · ε

Cadence (spec §4.2, §8 item 8): the router index of a step is its position in the respaced
schedule (0 = last step, t = 0; N−1 = first step, t = 999). Odd index → full step, even index →
cache step reading router row ``index``; the very first call is always full because nothing is
cached yet (this matters for odd N).

Model timestep: ``time_input="discrete"`` passes the original integer timestep t (DiT).
``time_input="continuous"`` passes ``t + 1``, i.e. 1000 · t_c where t_c = (t + 1)/1000 is the
continuous time DPM-Solver's discrete VP schedule assigns to step t — the convention of U-ViT's
``nnet(x, t_c · 1000)`` — so both samplers hand a network the same value at the same noise level.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from l2c_compile.errors import L2CError
from l2c_compile.samplers.base import Combination, ModelCall, Role, SamplerPlan, SolverStep
from l2c_compile.samplers.schedules import (
    NUM_TRAIN_STEPS,
    alphas_cumprod,
    check_noise_schedule,
    check_time_input,
)


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The ``count`` kept timesteps of ``num_timesteps``, ascending (guided-diffusion's rule)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise L2CError(f"DDIM needs a positive integer number of steps, got {count!r}")
    if count > num_timesteps:
        raise L2CError(f"DDIM cannot take {count} steps out of {num_timesteps} training timesteps")
    stride = 1.0 if count <= 1 else (num_timesteps - 1) / (count - 1)
    # Accumulating the stride (not k * stride) reproduces the official rounding exactly.
    cur, kept = 0.0, []
    for _ in range(count):
        kept.append(round(cur))
        cur += stride
    return kept


def ddim_role(position: int, call_index: int) -> tuple[Role, int | None]:
    """L2C role and router row of the DDIM step at respaced ``position`` (0 = last step)."""
    if call_index == 0 or position % 2 == 1:
        return "full", None
    return "cache", position


def ddim_plan_for_timesteps(
    timesteps: Sequence[int],
    *,
    noise_schedule: str = "linear",
    time_input: str = "discrete",
    options: tuple[tuple[str, object], ...] = (),
) -> SamplerPlan:
    """A DDIM plan over explicit training timesteps, given in sampling (descending) order.

    ``ddim_plan`` uses the official respacing; this entry point serves other spacings (e.g.
    diffusers' "leading"), with the same update rule and the same position-based cadence.
    """
    check_noise_schedule(noise_schedule)
    check_time_input(time_input)
    ts = [int(t) for t in timesteps]
    if not ts:
        raise L2CError("DDIM needs at least one timestep")
    if any(b >= a for a, b in itertools.pairwise(ts)) or ts[-1] < 0 or ts[0] >= NUM_TRAIN_STEPS:
        raise L2CError(f"DDIM timesteps must strictly decrease within 0..{NUM_TRAIN_STEPS - 1}")
    ac = alphas_cumprod(noise_schedule)
    n = len(ts)
    steps = []
    for call_index, t in enumerate(ts):
        ab = float(ac[t])
        ab_prev = float(ac[ts[call_index + 1]]) if call_index + 1 < n else 1.0
        x_coef = math.sqrt(ab_prev) / math.sqrt(ab)
        eps_coef = math.sqrt(1.0 - ab_prev) - math.sqrt(ab_prev) * math.sqrt(1.0 / ab - 1.0)
        role, router_index = ddim_role(n - 1 - call_index, call_index)
        model_t = float(t) if time_input == "discrete" else float(t + 1)
        call = ModelCall(index=call_index, timestep=model_t, role=role, router_index=router_index)
        steps.append(
            SolverStep(calls=(call,), update=Combination(x_coef, ((call_index, eps_coef),)))
        )
    return SamplerPlan(
        sampler="ddim",
        nfe=n,
        steps=tuple(steps),
        noise_schedule=noise_schedule,
        time_input=time_input,
        options=options,
    )


def ddim_plan(
    nfe: int, *, noise_schedule: str = "linear", time_input: str = "discrete"
) -> SamplerPlan:
    """DDIM with η = 0 and ``nfe`` steps, respaced as ``space_timesteps(1000, str(nfe))``."""
    kept = space_timesteps(NUM_TRAIN_STEPS, nfe)
    options: tuple[tuple[str, object], ...] = (("eta", 0.0), ("spacing", "space_timesteps"))
    return ddim_plan_for_timesteps(
        kept[::-1], noise_schedule=noise_schedule, time_input=time_input, options=options
    )
