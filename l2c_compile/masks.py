"""The vocabulary every executor shares: sublayer kinds and keys, step masks and the cache/drop mode.

One definition each, imported by the schedule, the reference executor, router training and the
compiler's passes.

A model family's blocks have two or more cacheable sublayer *kinds*: DiT and U-ViT have
``("attn", "mlp")``; PixArt's text-to-image blocks have ``("attn", "cross", "mlp")`` (self-attention,
cross-attention to the prompt, feed-forward). A step mask holds one set of block ids per kind, in
the order of the schedule's kinds, so a two-kind mask is ``(reused attention, reused MLP)``.
"""

from __future__ import annotations

from typing import Literal

Kind = str  # one of KINDS
SublayerKey = tuple[str, int]  # (kind, block id)
Mask = tuple[frozenset[int], ...]  # reused (or dropped) block ids, one set per kind
CacheMode = Literal["cache", "drop"]  # what a skipped sublayer contributes: its cached output, or nothing
MODES: tuple[CacheMode, ...] = ("cache", "drop")

# Every kind a block may declare, in the order they run inside a block. A new model family with
# another kind of sublayer adds its name here (in execution order) and nowhere else.
KINDS: tuple[str, ...] = ("attn", "cross", "mlp")
DEFAULT_KINDS: tuple[str, ...] = ("attn", "mlp")  # DiT and U-ViT; what a file without ``kinds`` means
KIND_NAMES = {"attn": "attention", "cross": "cross-attention", "mlp": "MLP"}


def key_order(key: SublayerKey) -> tuple[int, int]:
    """Execution order of sublayers: block id, then the kind's place in :data:`KINDS`."""
    return (key[1], KINDS.index(key[0]))


def check_kinds(kinds: object) -> tuple[str, ...]:
    """``kinds`` as a tuple in execution order; ValueError naming an unknown, repeated or
    out-of-order kind (the message lists :data:`KINDS`)."""
    if isinstance(kinds, str) or not isinstance(kinds, list | tuple):
        raise ValueError(f"sublayer kinds must be a list of names from {list(KINDS)}, got {kinds!r}")
    out = tuple(kinds)
    if not out or any(k not in KINDS for k in out):
        raise ValueError(f"sublayer kinds must be names from {list(KINDS)}, got {list(out)}")
    if list(out) != sorted(set(out), key=KINDS.index):
        raise ValueError(f"sublayer kinds must be distinct and in block order {list(KINDS)}, got {list(out)}")
    return out


def empty_mask(kinds: tuple[str, ...] = DEFAULT_KINDS) -> Mask:
    """The mask that reuses nothing, one empty set per kind."""
    return tuple(frozenset() for _ in kinds)


def mask_keys(mask: Mask, kinds: tuple[str, ...]) -> list[SublayerKey]:
    """The ``(kind, block)`` keys a mask names, in :func:`key_order`."""
    if len(mask) != len(kinds):
        raise ValueError(f"a mask over {len(kinds)} kinds {list(kinds)} has {len(mask)} sets")
    return sorted(((k, int(b)) for k, ids in zip(kinds, mask, strict=True) for b in ids), key=key_order)


def all_keys(depth: int, kinds: tuple[str, ...] = DEFAULT_KINDS) -> list[SublayerKey]:
    """Every sublayer of a ``depth``-block model with ``kinds``, in :func:`key_order`."""
    return [(k, b) for b in range(depth) for k in kinds]
