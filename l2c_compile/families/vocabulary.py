"""The vocabulary every executor shares: sublayer kinds and keys, layouts, step masks and the
cache/drop mode.

One definition each, imported by the schedule, the reference executor, router training and the
compiler's passes.

A model family's blocks have one or more cacheable sublayer *kinds* (declared in
:mod:`l2c_compile.families`): DiT and U-ViT blocks have attention and MLP; PixArt's text-to-image
blocks add a cross-attention between them. The kinds are names in one ordered vocabulary
(:func:`kinds`, in the order they run inside a block); a family with a new kind adds it to the
vocabulary by declaring it (:func:`register_kind`). A step mask holds one set of block ids per
kind, in the order of the schedule's kinds, so a two-kind mask is ``(reused attention, reused MLP)``.

A :class:`Layout` says which kinds each block has: one group of identical blocks for DiT, U-ViT
and PixArt; several where a family's block groups differ (FLUX-shaped models).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Kind = str  # a name in the vocabulary (kinds())
SublayerKey = tuple[str, int]  # (kind, block id)
Mask = tuple[frozenset[int], ...]  # reused (or dropped) block ids, one set per kind
CacheMode = Literal["cache", "drop"]  # what a skipped sublayer contributes: its cached output, or nothing
MODES: tuple[CacheMode, ...] = ("cache", "drop")


@dataclass(frozen=True)
class KindWords:
    """How people read a kind: its name in messages and reports, and its letter in text grids."""

    label: str
    letter: str


# The vocabulary, in the order kinds run inside a block. Families add theirs by declaring them.
_VOCABULARY: dict[str, KindWords] = {
    "attn": KindWords("attention", "a"),
    "cross": KindWords("cross-attention", "x"),
    "mlp": KindWords("MLP", "m"),
}
DEFAULT_KINDS: tuple[str, ...] = ("attn", "mlp")  # DiT and U-ViT; what a file without ``kinds`` means
# The trunk: every block at once. A free-form schedule's call may reuse the trunk's output (the
# last block's output) of the latest call that ran the blocks; its cache slots are
# ``(TRUNK, j)``, one per tensor the blocks hand to the layers after them, ordered after every
# sublayer. Not a kind: no family declares it and no router has an entry for it.
TRUNK = "trunk"


def kinds() -> tuple[str, ...]:
    """Every kind known so far, in the order they run inside a block."""
    return tuple(_VOCABULARY)


def register_kind(name: str, label: str, letter: str, *, after: str | None = None) -> None:
    """Add kind ``name`` to the vocabulary (once; re-declaring the same words is a no-op).

    ``after``: the kind it runs after inside a block (default: last). ValueError for a name that
    is not an identifier, a letter that is not one lower-case character or is taken, or a name
    already declared with other words.
    """
    words = KindWords(label, letter)
    if name == TRUNK:
        raise ValueError(f"{TRUNK!r} names every block at once (a trunk reuse), not a sublayer kind")
    if name in _VOCABULARY:
        if _VOCABULARY[name] != words:
            raise ValueError(f"kind {name!r} is already declared as {_VOCABULARY[name]}")
        return
    if not name.isidentifier() or not name.islower():
        raise ValueError(f"a kind name must be a lower-case identifier, got {name!r}")
    if len(letter) != 1 or not (letter.isalpha() and letter.islower()) or any(w.letter == letter for w in _VOCABULARY.values()):
        raise ValueError(f"kind {name!r}: letter {letter!r} is not one free lower-case letter")
    items = list(_VOCABULARY.items())
    at = len(items) if after is None else [k for k, _ in items].index(after) + 1
    items.insert(at, (name, words))
    _VOCABULARY.clear()
    _VOCABULARY.update(items)


# Cache slots of sublayers with several outputs: slot kind -> (kind, output name, output index).
_SLOTS: dict[str, tuple[str, str, int]] = {}


def register_slot(kind: str, output: str, index: int = 0) -> str:
    """The cache-slot kind ``<kind>_<output>`` of output ``index`` of a several-output sublayer
    (e.g. ``attn_txt``: a joint attention's text stream); it sorts right after ``kind``."""
    name = f"{kind}_{output}"
    if name in _VOCABULARY:
        raise ValueError(f"cache slot {name!r} clashes with the kind of that name")
    _SLOTS[name] = (kind, output, index)
    return name


def slot_base(kind: str) -> str:
    """The kind a cache slot belongs to (a kind is its own)."""
    return _SLOTS[kind][0] if kind in _SLOTS else kind


def kind_name(kind: str) -> str:
    """The words for ``kind`` in messages ("attention", "MLP", "attention (txt)", …)."""
    if kind == TRUNK:
        return "trunk output"
    if kind in _SLOTS:
        base, output, _ = _SLOTS[kind]
        return f"{kind_name(base)} ({output})"
    return _VOCABULARY[kind].label if kind in _VOCABULARY else kind


def kind_letter(kind: str) -> str:
    """``kind``'s letter in text grids (``a``, ``x``, ``m``, …)."""
    return _VOCABULARY[kind].letter


def kind_rank(kind: str) -> int:
    """``kind``'s place in the vocabulary (execution order inside a block)."""
    try:
        return list(_VOCABULARY).index(kind)
    except ValueError:
        raise ValueError(f"unknown sublayer kind {kind!r}; known kinds: {list(_VOCABULARY)}") from None


def key_order(key: SublayerKey) -> tuple[int, int, int]:
    """Execution order of sublayers: block id, then the kind's place in the vocabulary (a cache
    slot right after its kind, in output order); the trunk's slots come after every sublayer."""
    if key[0] == TRUNK:
        return (1 << 62, 0, key[1])
    if key[0] in _SLOTS:
        base, _, index = _SLOTS[key[0]]
        return (key[1], kind_rank(base), index + 1)
    return (key[1], kind_rank(key[0]), 0)


def check_kinds(names: object) -> tuple[str, ...]:
    """``names`` as a tuple in execution order; ValueError naming an unknown, repeated or
    out-of-order kind (the message lists the vocabulary)."""
    known = kinds()
    if isinstance(names, str) or not isinstance(names, list | tuple):
        raise ValueError(f"sublayer kinds must be a list of names from {list(known)}, got {names!r}")
    out = tuple(names)
    if not out or any(not isinstance(k, str) or k not in known for k in out):
        raise ValueError(f"sublayer kinds must be names from {list(known)}, got {list(out)}")
    if list(out) != sorted(set(out), key=known.index):
        raise ValueError(f"sublayer kinds must be distinct and in block order {list(known)}, got {list(out)}")
    return out


@dataclass(frozen=True)
class Layout:
    """Which sublayer kinds each block has: ``groups`` of consecutive blocks, ``(count, kinds)``.

    Block ids count from 0 over all groups. Router entries and every other flat per-sublayer
    table follow :meth:`sublayer_keys`: block by block, each block's kinds in vocabulary order (for one
    group of K kinds, entry ``K·i + k`` is kind ``k`` of block ``i``).
    """

    groups: tuple[tuple[int, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        groups = tuple((int(n), check_kinds(list(ks))) for n, ks in self.groups)
        if not groups or any(n < 1 for n, _ in groups):
            raise ValueError(f"a layout needs groups of at least one block, got {self.groups!r}")
        object.__setattr__(self, "groups", groups)

    @classmethod
    def uniform(cls, depth: int, kinds: Sequence[str] = DEFAULT_KINDS) -> Layout:
        """``depth`` blocks that all have ``kinds``."""
        return cls(((depth, tuple(kinds)),))

    @property
    def depth(self) -> int:
        """Number of blocks."""
        return sum(n for n, _ in self.groups)

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind some block has, in vocabulary order."""
        return check_kinds(sorted({k for _, ks in self.groups for k in ks}, key=kind_rank))

    @property
    def is_uniform(self) -> bool:
        """Whether every block has the same kinds."""
        return len({ks for _, ks in self.groups}) == 1

    def kinds_of(self, block: int) -> tuple[str, ...]:
        """The kinds of block ``block``."""
        for n, ks in self.groups:
            if block < n:
                return ks
            block -= n
        raise ValueError(f"block {block} is beyond the layout's {self.depth} blocks")

    def blocks(self, kind: str) -> tuple[int, ...]:
        """The ids of the blocks that have ``kind``."""
        return tuple(b for b in range(self.depth) if kind in self.kinds_of(b))

    def sublayer_keys(self) -> list[SublayerKey]:
        """Every sublayer, in :func:`key_order` (the order of router entries)."""
        out: list[SublayerKey] = []
        start = 0
        for n, ks in self.groups:
            out += [(k, b) for b in range(start, start + n) for k in ks]
            start += n
        return out

    @property
    def width(self) -> int:
        """Number of sublayers (router entries per row)."""
        return sum(n * len(ks) for n, ks in self.groups)

    def to_json(self) -> list[list[object]]:
        """``[[count, [kinds…]], …]``."""
        return [[n, list(ks)] for n, ks in self.groups]

    @classmethod
    def from_json(cls, doc: object) -> Layout:
        """Inverse of :meth:`to_json`; ValueError for anything else."""
        if not isinstance(doc, list) or not all(
            isinstance(g, list) and len(g) == 2 and isinstance(g[0], int) and not isinstance(g[0], bool)
            and isinstance(g[1], list) for g in doc
        ):
            raise ValueError(f"sublayer groups must be [[count, [kinds…]], …], got {doc!r}")
        return cls(tuple((g[0], tuple(g[1])) for g in doc))


def empty_mask(kinds: tuple[str, ...] = DEFAULT_KINDS) -> Mask:
    """The mask that reuses nothing, one empty set per kind."""
    return tuple(frozenset() for _ in kinds)


def mask_keys(mask: Mask, kinds: tuple[str, ...]) -> list[SublayerKey]:
    """The ``(kind, block)`` keys a mask names, in :func:`key_order`."""
    if len(mask) != len(kinds):
        raise ValueError(f"a mask over {len(kinds)} kinds {list(kinds)} has {len(mask)} sets")
    return sorted(((k, int(b)) for k, ids in zip(kinds, mask, strict=True) for b in ids), key=key_order)


def mask_of(reuse: dict[str, Iterable[int]], kinds: tuple[str, ...]) -> Mask:
    """The mask of a ``{kind: block ids}`` mapping, one set per kind of ``kinds``."""
    return tuple(frozenset(int(b) for b in reuse.get(k, ())) for k in kinds)


def all_keys(depth: int, kinds: tuple[str, ...] = DEFAULT_KINDS, layout: Layout | None = None) -> list[SublayerKey]:
    """Every sublayer of a ``depth``-block model with ``kinds`` (or of ``layout``), in :func:`key_order`."""
    if layout is not None:
        return layout.sublayer_keys()
    return [(k, b) for b in range(depth) for k in kinds]
