"""Hardware features: every path that needs a CPU or GPU feature asks here, once.

Machines differ from one run to the next (a CPU with AVX-512 BF16 or AMX, one with AVX2 only; a
GPU or none), so no code path assumes a feature. Each feature is probed once per process (a tiny
call of the path itself where a flag could lie: torch's ``_is_mkldnn_bf16_supported`` reads CPUID,
but oneDNN may still refuse a bf16 primitive, e.g. under ``ONEDNN_MAX_CPU_ISA``), and the answer is
cached. Callers then either take a slower correct path and say so in one line (:func:`fallback_note`),
or refuse in one line naming the missing feature (:func:`require`).

Tests (and users who want to see a slower path) switch features off with the environment variable
``L2C_DISABLE_FEATURES`` (comma-separated names), read at every :func:`has` call, so a machine that
has a feature can run the code that machines without it take.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from l2c_compile.errors import L2CError

__all__ = ["DISABLE_ENV", "FEATURES", "Feature", "disabled", "fallback_note", "has", "report", "require"]

DISABLE_ENV = "L2C_DISABLE_FEATURES"


def _probe_onednn() -> bool:
    return bool(torch.backends.mkldnn.is_available())


def _probe_onednn_bf16() -> bool:
    """oneDNN's bf16 inner product, tried on a tiny problem (the call the CPU backend makes)."""
    if not _probe_onednn():
        return False
    try:
        x = torch.ones(2, 16, dtype=torch.bfloat16)
        w = torch.ones(8, 16, dtype=torch.bfloat16)
        out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.all(out == 16))


def _probe_cuda() -> bool:
    return bool(torch.cuda.is_available())


def _probe_cuda_bf16() -> bool:
    return _probe_cuda() and bool(torch.cuda.is_bf16_supported())


def _probe_triton() -> bool:
    from l2c_compile.kernels._common import HAS_TRITON

    return bool(HAS_TRITON)


@dataclass(frozen=True)
class Feature:
    """One hardware or build feature: its name, what it is (for messages) and its probe."""

    name: str
    description: str
    probe: Callable[[], bool]


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("onednn", "oneDNN (mkldnn) in this torch build", _probe_onednn),
        Feature(
            "onednn_bf16",
            "oneDNN bfloat16 GEMMs (AVX-512 BW/VL/DQ, AVX-512 BF16, AMX or AVX-NE-CONVERT)",
            _probe_onednn_bf16,
        ),
        Feature("cuda", "a CUDA GPU visible to this torch build", _probe_cuda),
        Feature("cuda_bf16", "bfloat16 matrix instructions on the CUDA GPU", _probe_cuda_bf16),
        Feature("triton", "the triton package", _probe_triton),
    )
}


@functools.cache
def _probed(name: str) -> bool:
    return FEATURES[name].probe()


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


def has(name: str) -> bool:
    """Whether feature ``name`` (a key of :data:`FEATURES`) is usable here and not disabled.

    The hardware probe runs once per process; ``L2C_DISABLE_FEATURES`` is read at every call.
    Raises ``KeyError`` for a name that is not a feature (a programming error, not user input).
    """
    if name not in FEATURES:
        raise KeyError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
    return name not in _disabled_names() and _probed(name)


def require(name: str, for_what: str) -> None:
    """Raise :class:`L2CError` (one line naming the feature) unless :func:`has` ``(name)``."""
    if not has(name):
        why = " (switched off by " + DISABLE_ENV + ")" if name in _disabled_names() else ""
        raise L2CError(f"{for_what} needs {FEATURES[name].description}, which is missing here{why}")


def fallback_note(dtype: torch.dtype, device: torch.device | str | None, backend: str) -> str | None:
    """The one line a compile prints when it takes a slower path for lack of a feature, else None.

    Today's case: bfloat16 linears on a CPU without oneDNN bf16 stay in torch's own GEMM (correct,
    several times slower than float32 through oneDNN on such a CPU).
    """
    device = torch.device(device or "cpu")
    if device.type == "cpu" and dtype == torch.bfloat16 and not has("onednn_bf16"):
        where = f"backend {backend!r}: " if backend != "eager" else ""
        return (
            f"note: {where}this CPU lacks {FEATURES['onednn_bf16'].description}; bfloat16 linears "
            "run through torch's reference GEMM (correct, slower; float32 is likely faster here)"
        )
    return None


def disabled(*names: str) -> dict[str, str]:
    """The environment entry that switches ``names`` off (for ``monkeypatch`` or a subprocess)."""
    for name in names:
        if name not in FEATURES:
            raise KeyError(f"unknown feature {name!r}")
    return {DISABLE_ENV: ",".join(sorted(_disabled_names() | set(names)))}


def report() -> dict[str, bool]:
    """``{feature: usable}`` for every feature (what ``l2c-compile env`` prints)."""
    return {name: has(name) for name in FEATURES}
