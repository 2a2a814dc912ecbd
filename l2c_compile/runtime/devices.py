"""Devices: turn a user's ``--device`` / ``device=`` into a usable ``torch.device`` or one clear error.

Asking torch for a device it was not built with (``cuda`` on a CPU-only wheel) or that is not
there (``cuda:3`` on a 1-GPU machine, ``mps`` off a Mac) fails deep inside the first tensor move,
with a long traceback. :func:`resolve_device` checks first and says what is available instead.
Whether CUDA is there is asked of :mod:`l2c_compile.runtime.features` (probed once, switchable off).
"""

from __future__ import annotations

import torch

from l2c_compile.errors import L2CError
from l2c_compile.runtime import features

__all__ = ["available_devices", "resolve_device"]


def available_devices() -> list[str]:
    """The device names this torch can use here, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if features.has("cuda"):
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        names += [f"xpu:{i}" for i in range(xpu.device_count())]
    return names


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a ``torch.device`` that exists on this machine (None stays None).

    Raises :class:`L2CError` (one line, listing the available devices) for a name torch does not
    know, the ``meta`` device (shapes without data: nothing can be computed there), a device type
    this torch build or machine lacks (or that ``L2C_DISABLE_FEATURES`` switched off), or an index
    past the device count; and, first, for an ``L2C_DISABLE_FEATURES`` naming no feature
    (:func:`~l2c_compile.runtime.features.check_switch`).
    """
    features.check_switch()
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise L2CError(
            f"unknown device {device!r}; available here: {', '.join(available_devices())}"
        ) from None
    if dev.type == "cpu":
        return dev
    available = available_devices()
    if dev.type == "meta":
        raise L2CError(
            f"device 'meta' holds shapes, not data, so nothing can run there; available here: "
            f"{', '.join(available)}"
        )
    if dev.type == "cuda":
        ok = features.has("cuda") and (dev.index is None or dev.index < torch.cuda.device_count())
    elif dev.type == "mps":
        ok = "mps" in available
    elif dev.type == "xpu":
        ok = any(a.startswith("xpu") for a in available) and (
            dev.index is None or f"xpu:{dev.index}" in available
        )
    else:
        ok = False
    if not ok:
        why = ""
        if dev.type == "cuda" and not features.has("cuda"):
            if "cuda" in features.switched_off():
                why = f" ({features.missing('cuda')})"
            elif torch.version.cuda is None:
                why = " (this torch build has no CUDA)"
            else:
                why = " (no CUDA GPU is visible)"
        raise L2CError(
            f"device {str(dev)!r} is not available{why}; available here: {', '.join(available)}"
        )
    return dev
