"""Hardware features: every path that needs a CPU or GPU feature asks here, once.

Machines differ from one run to the next (a CPU with AVX-512 BF16 or AMX, one with AVX2 only; a
GPU or none), so no code path assumes a feature. Each feature is probed once per process (a tiny
call of the path itself where a flag could lie: torch's ``_is_mkldnn_bf16_supported`` reads CPUID,
but oneDNN may still refuse a bf16 primitive, e.g. under ``ONEDNN_MAX_CPU_ISA``), and the answer is
cached. A feature may require others (``onednn_bf16`` needs ``onednn``): it is usable only when they
are. Callers then either take a slower correct path and say so in one line (:func:`fallback_notes`,
recorded in a compiled artifact's ``CompileRecord.fallbacks``), or refuse in one line naming the missing
feature and why it is missing (:func:`require`, :func:`missing`).

Tests (and users who want to see a slower path) switch features off with the environment variable
``L2C_DISABLE_FEATURES`` (comma-separated names), read at every :func:`has` call, so a machine that
has a feature can run the code that machines without it take. The variable is user input:
:func:`check_switch` (called by :func:`~l2c_compile.runtime.devices.resolve_device`, hence by every compile,
load and command that takes a device) refuses a name that is not a feature.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from l2c_compile.errors import L2CError

__all__ = [
    "DISABLE_ENV",
    "FEATURES",
    "Feature",
    "check_switch",
    "disabled",
    "fallback_notes",
    "has",
    "machine_notes",
    "missing",
    "report",
    "require",
    "switched_off",
]

DISABLE_ENV = "L2C_DISABLE_FEATURES"


def _probe_onednn() -> bool:
    return bool(torch.backends.mkldnn.is_available())


def _onednn_linear_works(dtype: torch.dtype) -> bool:
    """oneDNN's inner product in ``dtype``, tried on a tiny problem (the call the CPU backend makes)."""
    if not _probe_onednn():
        return False
    try:
        x = torch.ones(2, 16, dtype=dtype)
        w = torch.ones(8, 16, dtype=dtype)
        out = torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    except (RuntimeError, AttributeError):
        return False
    return bool(torch.all(out == 16))


def _probe_onednn_bf16() -> bool:
    return _onednn_linear_works(torch.bfloat16)


def _probe_onednn_fp16() -> bool:
    return _onednn_linear_works(torch.float16)


def _probe_cuda() -> bool:
    return bool(torch.cuda.is_available())


def _probe_cuda_bf16() -> bool:
    if not _probe_cuda():
        return False
    try:  # native bf16 only: torch's default also counts emulation (pre-Ampere GPUs)
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch without the argument answers for native support
        return bool(torch.cuda.is_bf16_supported())


def _probe_triton() -> bool:
    """Whether ``triton`` and ``triton.language`` import (as ``kernels._common.HAS_TRITON`` asks)."""
    try:
        import triton.language  # noqa: F401  (imports triton too)
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Feature:
    """One hardware or build feature.

    ``name``: its key (what ``L2C_DISABLE_FEATURES`` and ``l2c-compile env`` use); ``description``:
    what it is, in words that read after "needs" and "lacks"; ``probe``: the once-per-process test;
    ``requires``: the features it is unusable without (``has`` is false when one of them is).
    """

    name: str
    description: str
    probe: Callable[[], bool]
    requires: tuple[str, ...] = ()


FEATURES: dict[str, Feature] = {
    f.name: f
    for f in (
        Feature("onednn", "oneDNN (torch's mkldnn backend)", _probe_onednn),
        Feature(
            "onednn_bf16",
            "oneDNN bfloat16 GEMMs (AVX-512 BW/VL/DQ, AVX-512 BF16, AMX or AVX-NE-CONVERT)",
            _probe_onednn_bf16,
            requires=("onednn",),
        ),
        Feature(
            "onednn_fp16",
            "oneDNN float16 GEMMs (AVX-512 FP16, AMX-FP16 or AVX-NE-CONVERT)",
            _probe_onednn_fp16,
            requires=("onednn",),
        ),
        Feature("cuda", "a CUDA GPU visible to this torch build", _probe_cuda),
        Feature("cuda_bf16", "bfloat16 matrix instructions on the CUDA GPU", _probe_cuda_bf16,
                requires=("cuda",)),
        Feature("triton", "the triton package", _probe_triton),
    )
}


@functools.cache
def _probed(name: str) -> bool:
    return FEATURES[name].probe()


def switched_off() -> frozenset[str]:
    """The names ``L2C_DISABLE_FEATURES`` lists now (unchecked; see :func:`check_switch`)."""
    raw = os.environ.get(DISABLE_ENV, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


def check_switch() -> None:
    """Raise :class:`L2CError` (one line, listing the known names) when ``L2C_DISABLE_FEATURES``
    names something that is not a feature: a typo would otherwise switch nothing off, silently."""
    unknown = sorted(switched_off() - set(FEATURES))
    if unknown:
        what = "an unknown feature" if len(unknown) == 1 else "unknown features"
        raise L2CError(
            f"{DISABLE_ENV} names {what} {', '.join(map(repr, unknown))}; known: {', '.join(FEATURES)}"
        )


def _feature(name: str) -> Feature:
    if name not in FEATURES:
        raise KeyError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
    return FEATURES[name]


def _fault(name: str) -> tuple[str, bool] | None:
    """Why ``name`` is unusable: ``(the feature at fault, whether it is switched off)``, else None.

    The feature's own switch comes first, then its requirements (in order), then its probe.
    """
    feature = _feature(name)
    if name in switched_off():
        return name, True
    for required in feature.requires:
        fault = _fault(required)
        if fault is not None:
            return fault
    return None if _probed(name) else (name, False)


def has(name: str) -> bool:
    """Whether feature ``name`` (a key of :data:`FEATURES`) is usable here: probed present, not
    switched off, and every feature it requires usable too.

    The hardware probe runs once per process; ``L2C_DISABLE_FEATURES`` is read at every call.
    Raises ``KeyError`` for a name that is not a feature (a programming error, not user input).
    """
    return _fault(name) is None


def missing(name: str) -> str:
    """Why feature ``name`` is unusable, in words: ``"this machine lacks <description>"`` or
    ``"<description> is switched off (L2C_DISABLE_FEATURES=<names>)"``, naming the required feature
    at fault where that is the cause; ``""`` when :func:`has` ``(name)``. ``KeyError`` as ``has``.
    """
    fault = _fault(name)
    if fault is None:
        return ""
    at_fault, switched = fault
    description = FEATURES[at_fault].description
    if switched:
        return f"{description} is switched off ({DISABLE_ENV}={','.join(sorted(switched_off()))})"
    return f"this machine lacks {description}"


def require(name: str, for_what: str, error: type[Exception] = L2CError) -> None:
    """Raise ``error`` (default :class:`L2CError`; one line naming the feature and why it is
    missing, :func:`missing`) unless :func:`has` ``(name)``. ``for_what``: what needs it, e.g.
    ``"cuda_graph=True"``."""
    fault = _fault(name)
    if fault is None:
        return
    description = FEATURES[name].description
    if fault[0] != name:  # a required feature is at fault: name both
        raise error(f"{for_what} needs {description}; {missing(name)}")
    why = "which is switched off" if fault[1] else "which this machine lacks"
    where = f" ({DISABLE_ENV}={','.join(sorted(switched_off()))})" if fault[1] else ""
    raise error(f"{for_what} needs {description}, {why}{where}")


# dtype → (the feature its CPU GEMMs need, its name in notes)
_CPU_GEMM = {torch.bfloat16: ("onednn_bf16", "bfloat16"), torch.float16: ("onednn_fp16", "float16")}


def fallback_notes(dtype: torch.dtype, device: torch.device | str | None, backend: str) -> list[str]:
    """The lines (one each, ``"note: …"``) a compile of ``dtype`` weights on ``device`` with
    ``backend`` (``"eager"``, ``"inductor"`` or ``"regional"``) prints and records for the slower
    correct paths it takes for lack of a feature; ``[]`` where the fast paths run.

    The cases: bfloat16 / float16 on a CPU without oneDNN GEMMs of that dtype (torch's reference
    GEMM); float32 under ``"regional"`` / ``"inductor"`` without oneDNN (torch's own GEMM instead of
    :func:`~l2c_compile.runtime.backends.linear_onednn`); bfloat16 on a CUDA GPU without native bf16 (only
    when a GPU is there at all: without one, the device is refused before this is asked).
    """
    device = torch.device(device or "cpu")
    where = f"backend {backend!r}: " if backend != "eager" else ""
    notes = []
    if device.type == "cpu" and dtype in _CPU_GEMM and not has(_CPU_GEMM[dtype][0]):
        feature, kind = _CPU_GEMM[dtype]
        notes.append(f"note: {where}{missing(feature)}; {kind} linears run through torch's reference GEMM "
                     "(correct, slower; float32 is likely faster here)")
    if device.type == "cpu" and dtype == torch.float32 and backend in ("regional", "inductor") \
            and not has("onednn"):
        notes.append(f"note: {where}{missing('onednn')}; float32 linears stay in torch's own GEMM instead "
                     "of oneDNN's (correct, slower)")
    if device.type == "cuda" and dtype == torch.bfloat16 and has("cuda") and not has("cuda_bf16"):
        notes.append(f"note: {where}{missing('cuda_bf16')}; bfloat16 matrix products run without them "
                     "(correct, slower; float16 or float32 is likely faster here)")
    return notes


def machine_notes(interpreter: bool = False) -> list[str]:
    """What this machine's missing features mean, one line each: the slower paths that compiles
    here will take and the requests that are refused (``l2c-compile env`` prints them).
    ``interpreter``: whether ``TRITON_INTERPRET=1`` was set before the kernels were imported
    (``kernels._common.INTERPRET``), so Triton's interpreter runs them on CPU."""
    notes = []
    for feature, kind in _CPU_GEMM.values():
        if not has(feature):
            notes.append(f"{missing(feature)}: --dtype {kind} on CPU runs torch's reference GEMM "
                         "(correct, slower; float32 is likely faster here)")
    if not has("onednn"):
        notes.append(f"{missing('onednn')}: backends 'regional' and 'inductor' keep float32 linears in "
                     "torch's own GEMM (correct, slower)")
    if not has("cuda"):
        notes.append(f"{missing('cuda')}: --device cuda and CUDA graphs (--cuda-graph) are refused")
    elif not has("cuda_bf16"):
        notes.append(f"{missing('cuda_bf16')}: --dtype bfloat16 on the GPU runs without them (correct, "
                     "slower; --dtype auto picks float32 there)")
    if not has("triton"):
        notes.append(f"{missing('triton')}: the fused reuse epilogues run their torch references")
    elif not has("cuda"):
        notes.append("the fused reuse epilogues run in Triton's interpreter on CPU (TRITON_INTERPRET=1; "
                     "for tests, slow)" if interpreter else
                     "the fused reuse epilogues run their torch references on CPU (Triton kernels need CUDA)")
    return notes


def disabled(*names: str) -> dict[str, str]:
    """The environment entry that switches ``names`` off (for ``monkeypatch`` or a subprocess),
    added to those switched off now. ``KeyError`` for a name that is not a feature."""
    for name in names:
        _feature(name)
    return {DISABLE_ENV: ",".join(sorted(switched_off() | set(names)))}


def report() -> dict[str, bool]:
    """``{feature: usable}`` for every feature (what ``l2c-compile env`` prints)."""
    return {name: has(name) for name in FEATURES}
