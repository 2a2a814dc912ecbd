"""Sane bounds on sizes read from files, checked before anything is built from them.

A schedule, manifest or diffusers config is a few hundred bytes that say how big things are; a
crafted one saying ``"depth": 10**7`` or ``hidden_size = 2**40`` must be refused at once, not
after minutes of building or with an overflow traceback. The bounds are far above every model
this project knows (DiT-XL/2: 28 blocks, width 1152, 675 M parameters; samplers: at most the
1000 training timesteps) and far below what would exhaust a machine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from l2c_compile.errors import L2CError

__all__ = ["MAX_CONFIG_INT", "MAX_DEPTH", "MAX_NFE", "MAX_PARAMS", "check_model_size"]

MAX_DEPTH = 1024  # transformer blocks
MAX_NFE = 1000  # model calls of one sampler run (diffusion models train on 1000 timesteps)
MAX_CONFIG_INT = 1 << 16  # any integer in a model config (widths, sizes, class counts)
MAX_PARAMS = 1 << 36  # 68.7 G parameters: 100× DiT-XL/2


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_model_size(
    config: Mapping[str, Any], what: str, *, depth: Any, width: Any, tokens: Any = 0,
    classes: Any = 0, mlp_ratio: Any = 4.0,
) -> None:
    """L2CError unless a model ``config`` (``what`` names it) is of a buildable size.

    Every integer in ``config`` must be in 0..MAX_CONFIG_INT, ``depth`` in 1..MAX_DEPTH, and the
    parameter count estimated from ``depth``, ``width``, ``tokens`` (patches), ``classes`` and
    ``mlp_ratio`` at most MAX_PARAMS.
    """
    for key, value in config.items():
        if _is_int(value) and not 0 <= value <= MAX_CONFIG_INT:
            raise L2CError(f"{what}: {key} = {value} is out of range (0..{MAX_CONFIG_INT}); refusing to build it")
        if isinstance(value, float) and not math.isfinite(value):
            raise L2CError(f"{what}: {key} = {value} is not a finite number")
    if not _is_int(depth) or not 1 <= depth <= MAX_DEPTH:
        raise L2CError(f"{what}: depth {depth!r} is not an integer in 1..{MAX_DEPTH}")
    sizes = {"width": width, "tokens": tokens, "classes": classes}
    for name, value in sizes.items():
        if not _is_int(value) or value < 0:
            raise L2CError(f"{what}: {name} {value!r} is not a non-negative integer")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, int | float) or not 0 < mlp_ratio <= 64:
        raise L2CError(f"{what}: mlp_ratio {mlp_ratio!r} is not a number in (0, 64]")
    # per block: attention 4·w², MLP 2·ratio·w², adaLN 6·w²; plus position and class embeddings
    params = depth * width * width * (10 + 2 * mlp_ratio) + (tokens + classes + 1) * width
    if params > MAX_PARAMS:
        raise L2CError(
            f"{what}: about {params:.3g} parameters (depth {depth}, width {width}), more than "
            f"{MAX_PARAMS:.3g}; refusing to build it"
        )
