"""SamplerPlan: a whole sampling trajectory as data.

Every sampler here is linear in the latent and the model outputs once its coefficients are
known, so a trajectory is a fixed list of model calls with scalar coefficients, computed once
(in float64) when the plan is made. That is what lets the compiler unroll the loop with the
coefficients as constants, and what the reference executor walks step by step.

Shape of a plan::

    for step in plan.steps:                      # solver steps (DDIM: 1 call, DPM-Solver-2: 2)
        for call in step.calls:                  # model evaluations, in sampling order
            x_in = call.input.x * x + Σ coef * eps[j]    (j: earlier calls)
            eps[call.index] = model(x_in, call.timestep)  # guided prediction (ε or v)
            if call.output: eps[call.index] = call.output.x * x_in + coef * eps[call.index]
        x = step.update.x * x + Σ coef * eps[j]

``eps[j]`` is what call ``j`` hands the updates: its ε, or, for a call with an ``output``
(multistep solvers in data prediction, DPM-Solver++), a linear function of its input and its ε
(``x0 = (x_in − σ ε) / α``). Combinations may read any earlier call, also one of an earlier
step (a multistep update reads the previous step's prediction).

What a call returns is ``plan.prediction``: ``"epsilon"`` (the VP samplers: DDIM, DPM-Solver)
or ``"velocity"`` (flow matching: ``v = ε − x0`` for ``x_t = (1 − σ) x0 + σ ε``). The
combinations are linear in whatever it is, so both executors and the compiler run every plan
alike; what differs is the noise level a state has (:meth:`SamplerPlan.noise_level`), which
router training reads when it noises x0 straight to a step's start.

``call.role`` is the L2C cadence: ``"full"`` calls compute every sublayer and refresh the cache;
``"cache"`` calls may reuse cached sublayer outputs and use router row ``call.router_index``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch

from l2c_compile.samplers.schedules import FLOW_SCHEDULE, alpha_bar_at

Role = Literal["full", "cache"]


@dataclass(frozen=True)
class Combination:
    """``x * state + Σ coef * eps[call_index]`` with scalar coefficients."""

    x: float
    eps: tuple[tuple[int, float], ...] = ()

    def apply(self, state: torch.Tensor, eps: dict[int, torch.Tensor]) -> torch.Tensor:
        """Evaluate the combination (in the dtype of ``state``)."""
        out = state * self.x if self.x != 1.0 else state
        for j, coef in self.eps:
            out = out + coef * eps[j]
        return out


@dataclass(frozen=True)
class LinearForm:
    """``x * state + Σ coef * eps[j]`` while a plan is being built (float64): add, scale, freeze."""

    x: float
    eps: tuple[tuple[int, float], ...] = ()

    @staticmethod
    def output(j: int, coef: float = 1.0) -> LinearForm:
        """``coef * eps[j]``: what call ``j`` hands the updates."""
        return LinearForm(0.0, ((j, coef),))

    def __add__(self, other: LinearForm) -> LinearForm:
        coefs = dict(self.eps)
        for j, c in other.eps:
            coefs[j] = coefs.get(j, 0.0) + c
        return LinearForm(self.x + other.x, tuple(sorted(coefs.items())))

    def __mul__(self, k: float) -> LinearForm:
        return LinearForm(self.x * k, tuple((j, c * k) for j, c in self.eps))

    def combination(self) -> Combination:
        """The frozen Combination, without terms whose coefficient is exactly zero."""
        return Combination(self.x, tuple((j, c) for j, c in self.eps if c != 0.0))


@dataclass(frozen=True)
class ModelCall:
    """One model evaluation (one NFE) of the trajectory."""

    index: int  # 0-based position in sampling order (NFE number - 1)
    timestep: float  # the value the network receives as t
    role: Role  # "full" refreshes the cache; "cache" may reuse it
    router_index: int | None  # router row used at a cache call (None for full calls)
    input: Combination = field(default_factory=lambda: Combination(1.0))
    # What later combinations read as eps[index]: None = the ε itself; else this combination of
    # the call's input (its ``x``) and its ε (the one ``eps`` entry, at ``index``).
    output: Combination | None = None
    # Flow-matching plans: σ of the call's input, x_in = (1 − σ)·x0 + σ·ε (None: a VP plan, whose
    # noise level follows from the timestep).
    sigma: float | None = None


@dataclass(frozen=True)
class SolverStep:
    """A solver step: its model calls, then the update of the latent state.

    ``restart``: for a multistep update that reads an earlier step's output, the update the
    solver uses when it starts at this step with no history (DPM-Solver++: the first-order step);
    router training, which noises x0 straight to a step's start, uses it. None: ``update`` reads
    only this step's calls.
    """

    calls: tuple[ModelCall, ...]
    update: Combination
    restart: Combination | None = None


@dataclass(frozen=True)
class SamplerPlan:
    """A complete, static sampling trajectory for one (sampler, NFE)."""

    sampler: str
    nfe: int
    steps: tuple[SolverStep, ...]
    noise_schedule: str  # "linear" | "scaled_linear" (VP β tables) | "flow" (x = (1 − σ)x0 + σε)
    # "discrete" (integer timesteps) | "continuous" (t * 1000); flow plans: "sigma_1000" (the
    # scheduler's timestep, σ·1000) | "sigma" (that timestep / 1000, as FluxPipeline passes it)
    time_input: str
    options: tuple[tuple[str, object], ...] = ()  # sampler-specific settings, for the manifest
    prediction: str = "epsilon"  # what every model call returns: "epsilon" | "velocity"

    @property
    def calls(self) -> tuple[ModelCall, ...]:
        """Every model call in sampling order."""
        return tuple(c for s in self.steps for c in s.calls)

    def __post_init__(self) -> None:
        calls = self.calls
        if len(calls) != self.nfe:
            raise ValueError(f"plan has {len(calls)} model calls but nfe={self.nfe}")
        if [c.index for c in calls] != list(range(self.nfe)):
            raise ValueError("model call indices must be 0..nfe-1 in order")

    def noise_level(self, call: ModelCall) -> tuple[float, float]:
        """(α, σ) of the state ``call`` receives, ``x_in = α·x0 + σ·ε``: the flow call's own σ
        with α = 1 − σ, or ``(sqrt(ᾱ), sqrt(1 − ᾱ))`` at a VP call's timestep."""
        if self.noise_schedule == FLOW_SCHEDULE:
            if call.sigma is None:
                raise ValueError(f"flow-matching plan {self.sampler}: call {call.index} has no sigma")
            return 1.0 - call.sigma, call.sigma
        ab = alpha_bar_at(call.timestep, self.noise_schedule, self.time_input)
        return math.sqrt(ab), math.sqrt(1.0 - ab)

    def describe(self) -> dict[str, object]:
        """A JSON-friendly summary (sampler, NFE, options, per-call timesteps and roles).

        A velocity plan adds ``prediction`` and each call's ``sigma``; an ε plan's summary has
        neither, so the manifests of the VP samplers read exactly as before.
        """
        out: dict[str, object] = {
            "sampler": self.sampler,
            "nfe": self.nfe,
            "noise_schedule": self.noise_schedule,
            "time_input": self.time_input,
        }
        if self.prediction != "epsilon":
            out["prediction"] = self.prediction
        out["options"] = dict(self.options)
        calls = []
        for c in self.calls:
            row: dict[str, object] = {"index": c.index, "timestep": c.timestep, "role": c.role,
                                      "router_index": c.router_index}
            if c.sigma is not None:
                row["sigma"] = c.sigma
            calls.append(row)
        out["calls"] = calls
        return out


EpsFn = Callable[[ModelCall, torch.Tensor], torch.Tensor]


def execute_plan(plan: SamplerPlan, noise: torch.Tensor, eps_fn: EpsFn) -> torch.Tensor:
    """Run ``plan`` from ``noise``; ``eps_fn(call, x_in)`` returns the (guided) model prediction
    (``plan.prediction``: ε, or the velocity of a flow-matching plan).

    The latent state and the sampler arithmetic stay in the dtype of ``noise``.
    """
    x = noise
    eps: dict[int, torch.Tensor] = {}
    last = last_reads(plan)
    for s, step in enumerate(plan.steps):
        for call in step.calls:
            x_in = call.input.apply(x, eps)
            eps[call.index] = eps_fn(call, x_in)
            if call.output is not None:
                eps[call.index] = call.output.apply(x_in, eps)
        x = step.update.apply(x, eps)
        for j in [j for j in eps if last[j] <= s]:
            del eps[j]
    return x


def last_reads(plan: SamplerPlan) -> dict[int, int]:
    """For each call, the index of the last solver step whose combinations read its output
    (its own step when none reads it later)."""
    last: dict[int, int] = {}
    for s, step in enumerate(plan.steps):
        for call in step.calls:
            last[call.index] = s
        reads = [j for c in step.calls for j, _ in c.input.eps] + [j for j, _ in step.update.eps]
        for j in reads:
            last[j] = max(last.get(j, s), s)
    return last
