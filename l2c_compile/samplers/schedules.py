"""Noise schedules: the discrete β tables and their continuous-time (VP) view, in float64.

Two tables of 1000 training steps are supported:

* ``"linear"`` — DiT / guided-diffusion: ``β = linspace(1e-4, 0.02, 1000)`` (scaled for 1000 steps).
* ``"scaled_linear"`` — Stable Diffusion / U-ViT latent models:
  ``β = linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2``.

:class:`DiscreteVP` is DPM-Solver's ``NoiseScheduleVP('discrete')``: discrete step ``i`` (0-based)
sits at continuous time ``t = (i + 1) / N``, and ``log α(t)`` is piecewise linear between those
knots. Everything here is float64 numpy; callers convert once (``torch.from_numpy``) if needed.
"""

from __future__ import annotations

import functools

import numpy as np

from l2c_compile.errors import L2CError, suggest

NOISE_SCHEDULES = ("linear", "scaled_linear")
# Flow matching (rectified flow): x_t = (1 − σ)·x0 + σ·ε; its plans carry each call's σ.
FLOW_SCHEDULE = "flow"
TIME_INPUTS = ("discrete", "continuous")  # integer timestep t | 1000 · continuous time
NUM_TRAIN_STEPS = 1000


def check_noise_schedule(kind: str) -> str:
    """Return ``kind`` if it names a known noise schedule, else raise L2CError."""
    if kind not in NOISE_SCHEDULES:
        raise L2CError(
            f"unknown noise schedule {kind!r}{suggest(str(kind), NOISE_SCHEDULES)}; "
            f"choose one of {', '.join(NOISE_SCHEDULES)}"
        )
    return kind


def check_time_input(time_input: str) -> str:
    """Return ``time_input`` if it names a known model time convention, else raise L2CError."""
    if time_input not in TIME_INPUTS:
        raise L2CError(
            f"unknown time input {time_input!r}{suggest(str(time_input), TIME_INPUTS)}; "
            f"choose one of {', '.join(TIME_INPUTS)}"
        )
    return time_input


@functools.cache
def _betas(kind: str) -> np.ndarray:
    if kind == "linear":
        # guided-diffusion scales the endpoints by 1000 / num_steps; with 1000 steps that is 1.
        scale = 1000 / NUM_TRAIN_STEPS
        out = np.linspace(scale * 1e-4, scale * 0.02, NUM_TRAIN_STEPS, dtype=np.float64)
    else:
        out = np.linspace(0.00085**0.5, 0.012**0.5, NUM_TRAIN_STEPS, dtype=np.float64) ** 2
    out.setflags(write=False)  # cached and shared: nobody may edit it in place
    return out


def betas(kind: str) -> np.ndarray:
    """β_i for i = 0..999 of the named schedule, float64, read-only."""
    return _betas(check_noise_schedule(kind))


@functools.cache
def _alphas_cumprod(kind: str) -> np.ndarray:
    out = np.cumprod(1.0 - _betas(kind))
    out.setflags(write=False)
    return out


def alphas_cumprod(kind: str) -> np.ndarray:
    """ᾱ_i = Π_{j≤i} (1 − β_j) for i = 0..999, float64, read-only."""
    return _alphas_cumprod(check_noise_schedule(kind))


def _interp(x: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation on increasing knots ``xp``, extrapolating the end segments.

    DPM-Solver's ``interpolate_fn`` extends the outermost segments as lines instead of clamping
    (``np.interp`` clamps), so times just outside the knot range keep a sensible slope.
    """
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, len(xp) - 2)
    x0, x1, y0, y1 = xp[j], xp[j + 1], yp[j], yp[j + 1]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


class DiscreteVP:
    """DPM-Solver's ``NoiseScheduleVP('discrete')`` over a 1000-step β table, in float64.

    Continuous time t ∈ (0, 1]; the knots are ``t_i = (i + 1) / N`` with ``log α(t_i) = ½ log ᾱ_i``.
    """

    T = 1.0

    def __init__(self, kind: str) -> None:
        self.kind = check_noise_schedule(kind)
        self.total_n = NUM_TRAIN_STEPS
        self.t_knots = np.arange(1, NUM_TRAIN_STEPS + 1, dtype=np.float64) / NUM_TRAIN_STEPS
        self.log_alpha_knots = 0.5 * np.cumsum(np.log1p(-betas(kind)))

    def marginal_log_mean_coeff(self, t: np.ndarray | float) -> np.ndarray:
        """log α(t)."""
        return _interp(np.asarray(t, dtype=np.float64), self.t_knots, self.log_alpha_knots)

    def marginal_alpha(self, t: np.ndarray | float) -> np.ndarray:
        """α(t) = sqrt(ᾱ) at continuous time t."""
        return np.exp(self.marginal_log_mean_coeff(t))

    def marginal_std(self, t: np.ndarray | float) -> np.ndarray:
        """σ(t) = sqrt(1 − α(t)²)."""
        return np.sqrt(-np.expm1(2.0 * self.marginal_log_mean_coeff(t)))

    def marginal_lambda(self, t: np.ndarray | float) -> np.ndarray:
        """λ(t) = log α(t) − log σ(t), the half log-SNR."""
        log_alpha = self.marginal_log_mean_coeff(t)
        return log_alpha - 0.5 * np.log(-np.expm1(2.0 * log_alpha))

    def inverse_lambda(self, lamb: np.ndarray | float) -> np.ndarray:
        """The continuous time t with λ(t) = ``lamb`` (interpolating t over log α)."""
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lamb, dtype=np.float64))
        # log α decreases with t; flip both so the knots increase.
        return _interp(log_alpha, self.log_alpha_knots[::-1], self.t_knots[::-1])


def alpha_bar_at(model_timestep: float, noise_schedule: str, time_input: str) -> float:
    """ᾱ of the state a network sees at ``model_timestep`` (the value a ModelCall passes it).

    Both samplers share one map from model timestep to continuous time: ``"discrete"`` passes
    ``1000 · t − 1`` (DDIM's integer step i sits at t = (i + 1) / N; DPM-Solver's discrete wrapper
    passes ``1000 · (t − 1/N)``) and ``"continuous"`` passes ``1000 · t``. At the knots this is
    exactly ``alphas_cumprod[i]``; between them, DPM-Solver's piecewise-linear log α.
    """
    check_time_input(time_input)
    offset = 1.0 if time_input == "discrete" else 0.0
    t = (float(model_timestep) + offset) / NUM_TRAIN_STEPS
    return float(DiscreteVP(noise_schedule).marginal_alpha(t)) ** 2
