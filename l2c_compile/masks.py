"""The vocabulary every executor shares: sublayer keys, step masks and the cache/drop mode.

One definition each, imported by the schedule, the reference executor, router training and the
compiler's passes.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["attn", "mlp"]
SublayerKey = tuple[str, int]  # ("attn" | "mlp", block id)
Mask = tuple[frozenset[int], frozenset[int]]  # (reused attention blocks, reused MLP blocks)
CacheMode = Literal["cache", "drop"]  # what a skipped sublayer contributes: its cached output, or nothing
MODES: tuple[CacheMode, ...] = ("cache", "drop")


def key_order(key: SublayerKey) -> tuple[int, int]:
    """Execution order of sublayers: block id, then attention before MLP."""
    return (key[1], 0 if key[0] == "attn" else 1)
