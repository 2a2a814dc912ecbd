"""The schedule format: a router thresholded into a static, per-call cache plan (spec §4.1, §5).

This module holds the :class:`Schedule` class and its JSON document, the threshold rule, the
official-router import (:func:`import_router`) and the heuristic baselines (:func:`heuristic`).

A :class:`Schedule` says, for every model call (NFE) of one sampler plan, whether it is a full
call (computes every sublayer, refreshes the cache) or a cache call, and which sublayers of each
kind a cache call reuses. It is plain data: a versioned JSON document a person can read and
diff, baked into the compiled sampler as constants and applied by the reference executor.

Threshold rule (both official codebases): a sublayer is *computed* iff ``sigmoid(logit) > θ``;
equality reuses. Only "cache" calls consult the router, each with row ``call.router_index``.

Mode: ``"cache"`` (L2C) makes a skipped sublayer reuse its cached output; ``"drop"`` (the paper's
learning-to-drop and random-drop baselines, Table 5) makes it contribute nothing, so the residual
add keeps only the stream. Each call's ``reuse_<kind>`` lists name the skipped sublayers in both
modes; a document without ``mode`` is a cache schedule.

Kinds: a schedule covers the sublayer kinds of its model's blocks (the vocabulary in
:mod:`l2c_compile.families.vocabulary`, declared by the families) and every call lists ``reuse_<kind>`` for
each, in that order; a call is a mapping from kind to block ids (:attr:`CallSchedule.reuse`). A
document without ``kinds`` covers attention and MLP (DiT, U-ViT: every document written before
kinds existed reads unchanged, and writing it back gives the same bytes); any other set says
``"kinds"`` in its header (PixArt adds cross-attention). When the model's block groups have
different kinds, the header adds ``"groups": [[count, [kinds…]], …]`` (:class:`~l2c_compile.families.vocabulary.Layout`)
and a call may name a block only under the kinds its group has. Router logits are laid out block
by block, each block's kinds in order: entry ``K·i + k`` is kind ``k`` of block ``i`` when every
block has K kinds (for two: ``attn0, mlp0, attn1, …``, the official layout).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2c_compile.errors import L2CError, suggest
from l2c_compile.families import thresholds
from l2c_compile.families.vocabulary import DEFAULT_KINDS, MODES, Layout, Mask, check_kinds
from l2c_compile.inputs import input_file, parse_json
from l2c_compile.io import write_text_atomic
from l2c_compile.limits import MAX_DEPTH, MAX_NFE
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule.router_files import check_router_target, load_router

__all__ = [
    "DEFAULT_THRESHOLDS",
    "HEURISTICS",
    "CallSchedule",
    "Schedule",
    "default_threshold",
    "heuristic",
    "import_router",
    "router_target",
]

SCHEDULE_FORMAT = "l2c-schedule"
SCHEDULE_VERSION = 2  # the newest version this l2c-compile writes (and every older one it reads)
VERSIONS = (1, 2)
ROLES = ("full", "cache")
HEURISTICS = ("random", "top", "bottom", "all")
TRUNK_KEY = "reuse_trunk"  # a version 2 call's JSON key: the call reuses the whole trunk


# The θ each official codebase samples with (spec §4.1), declared with each family
# (families/builtin.py); the one place the CLI takes defaults from.
DEFAULT_THRESHOLDS = thresholds()


def default_threshold(family: str) -> float:
    """The documented router threshold θ of a model family ("dit" 0.1, "uvit" 0.9)."""
    if family not in DEFAULT_THRESHOLDS:
        raise L2CError(
            f"no default threshold for model family {family!r}; pass one explicitly"
            + suggest(str(family), tuple(DEFAULT_THRESHOLDS))
        )
    return DEFAULT_THRESHOLDS[family]


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _layer_ids(ids: Iterable[Any], what: str, index: int) -> tuple[int, ...]:
    ids = tuple(ids)
    if not all(_is_int(i) and i >= 0 for i in ids):
        raise L2CError(
            f"call {index}: {what} must be non-negative integer layer ids, got {list(ids)}"
        )
    if len(set(ids)) != len(ids):
        raise L2CError(f"call {index}: {what} lists a layer twice: {list(ids)}")
    return tuple(sorted(ids))


# ---------------------------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallSchedule:
    """One model call: its role and the sublayers it reuses, ``{kind: sorted block ids}``.

    ``reuse`` lists every kind of the schedule (an empty mapping: attention and MLP, nothing
    reused), normalised to vocabulary order; ``L2CError`` for unknown kinds or bad ids.
    ``trunk``: the call skips every block and reuses the trunk output (the last block's output)
    of the latest earlier call that ran the blocks; only the layers before and after the blocks
    (embeddings, final layer) run. Such a call lists no sublayers. ``role`` and ``router_index``
    describe the sampler plan (L2C's cadence), not what the call may reuse.
    """

    index: int
    timestep: float
    role: str
    router_index: int | None = None
    reuse: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    trunk: bool = False

    def __post_init__(self) -> None:
        if not _is_int(self.index) or self.index < 0:
            raise L2CError(f"call index must be a non-negative integer, got {self.index!r}")
        if (
            isinstance(self.timestep, bool)
            or not isinstance(self.timestep, int | float)
            or not math.isfinite(self.timestep)
        ):
            raise L2CError(
                f"call {self.index}: timestep must be a finite number, got {self.timestep!r}"
            )
        if self.role not in ROLES:
            raise L2CError(
                f"call {self.index}: role must be 'full' or 'cache', got {self.role!r}"
                + suggest(str(self.role), ROLES)
            )
        if self.router_index is not None and (
            not _is_int(self.router_index) or self.router_index < 0
        ):
            raise L2CError(
                f"call {self.index}: router_index must be a non-negative integer or null"
            )
        object.__setattr__(self, "timestep", float(self.timestep))
        if not isinstance(self.reuse, Mapping):
            raise L2CError(f"call {self.index}: reuse must map sublayer kinds to layer ids")
        reuse = dict(self.reuse) or {k: () for k in DEFAULT_KINDS}
        try:
            kinds = check_kinds(sorted(reuse, key=_vocabulary_rank))
        except ValueError as exc:
            raise L2CError(f"call {self.index}: {exc}") from None
        object.__setattr__(
            self, "reuse", {k: _layer_ids(reuse[k], f"reuse_{k}", self.index) for k in kinds}
        )
        if not isinstance(self.trunk, bool):
            raise L2CError(f"call {self.index}: reuse_trunk must be true or false, got {self.trunk!r}")
        if self.trunk and any(self.reuse.values()):
            raise L2CError(f"call {self.index} reuses the trunk, so it lists no sublayers")

    @property
    def reuses(self) -> bool:
        """Whether this call reuses anything (a sublayer or the trunk)."""
        return self.trunk or any(self.reuse.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CallSchedule):
            return NotImplemented
        return (self.index, self.timestep, self.role, self.router_index, list(self.reuse.items()), self.trunk) == (
            other.index, other.timestep, other.role, other.router_index, list(other.reuse.items()), other.trunk)

    def __hash__(self) -> int:
        return hash((self.index, self.timestep, self.role, self.router_index, tuple(self.reuse.items()), self.trunk))

    @property
    def kinds(self) -> tuple[str, ...]:
        """The sublayer kinds this call covers, in block order."""
        return tuple(self.reuse)

    def reused(self, kind: str) -> tuple[int, ...]:
        """The block ids whose ``kind`` sublayer this call reuses (sorted)."""
        if kind not in self.reuse:
            raise L2CError(
                f"call {self.index} has no {kind!r} sublayers (kinds {list(self.kinds)})"
            )
        return self.reuse[kind]

    @property
    def mask(self) -> Mask:
        """Reused block ids per kind, in :attr:`kinds` order."""
        return tuple(frozenset(ids) for ids in self.reuse.values())

    def to_dict(self, version: int = 1) -> dict[str, Any]:
        """JSON-friendly dict (key order fixed for stable diffs); version 2 adds ``reuse_trunk``."""
        head = {
            "index": self.index,
            "timestep": self.timestep,
            "role": self.role,
            "router_index": self.router_index,
        }
        body = head | {f"reuse_{k}": list(self.reused(k)) for k in self.kinds}
        return body | {TRUNK_KEY: self.trunk} if version >= 2 else body

    @classmethod
    def from_dict(cls, d: Any, version: int = 1) -> CallSchedule:
        """Inverse of :meth:`to_dict`; ``L2CError`` on missing or mistyped fields."""
        return cls._from_dict(d, DEFAULT_KINDS, version)

    @classmethod
    def _from_dict(cls, d: Any, kinds: tuple[str, ...], version: int = 1) -> CallSchedule:
        """:meth:`from_dict` for a schedule whose calls list ``kinds``."""
        if not isinstance(d, dict):
            raise L2CError(f"schedule call must be a JSON object, got {type(d).__name__}")
        trunk = (TRUNK_KEY,) if version >= 2 else ()
        keys = ("index", "timestep", "role", "router_index", *(f"reuse_{k}" for k in kinds), *trunk)
        missing = [k for k in keys if k not in d]
        if missing:
            raise L2CError(f"schedule call {d.get('index', '?')} lacks {', '.join(missing)}")
        if TRUNK_KEY in d and not trunk:
            raise L2CError(f"call {d['index']} says {TRUNK_KEY}, which version 1 schedules do not have")
        listed = tuple(k.removeprefix("reuse_") for k in d if k.startswith("reuse_") and k != TRUNK_KEY)
        if set(listed) != set(kinds):
            raise L2CError(f"call {d['index']} lists kinds {list(listed)} but the schedule's are {list(kinds)}")
        for k in keys[4 : 4 + len(kinds)]:
            if not isinstance(d[k], list):
                raise L2CError(f"schedule call {d['index']}: {k} must be a list of layer ids")
        return cls(*(d[k] for k in keys[:4]), reuse={k: d[f"reuse_{k}"] for k in kinds},
                   trunk=d.get(TRUNK_KEY, False))


@dataclass(frozen=True)
class Schedule:
    """A complete static cache plan for one (model, depth, sampler, NFE).

    Version 1 is L2C's cadence: only the plan's cache calls reuse, each from the call right
    before it. Version 2 is free-form (SmoothCache, InvarDiff, FORA, DeepCache, step masks): any
    call after the first may reuse any sublayer, or the whole trunk (:attr:`CallSchedule.trunk`),
    and a reuse reads the most recent computed output, possibly several calls back.
    ``version=None`` takes the lowest version that holds the calls (so every file written
    before version 2 reads and writes back byte for byte).
    """

    model: str
    depth: int
    sampler: str
    nfe: int
    threshold: float | None
    source: dict[str, Any] = field(hash=False)
    calls: tuple[CallSchedule, ...]
    version: int | None = None  # None: 1 when the calls keep L2C's cadence, else 2
    mode: str = "cache"  # "cache": skipped sublayers reuse the cache; "drop": they add nothing
    kinds: tuple[str, ...] = DEFAULT_KINDS  # the blocks' sublayer kinds (vocabulary order)
    groups: Layout | None = None  # block groups with different kinds; None: every block has all

    def __post_init__(self) -> None:
        if self.version is not None and (not _is_int(self.version) or self.version not in VERSIONS):
            raise L2CError(
                f"unsupported schedule version {self.version!r} "
                f"(this l2c-compile reads versions {', '.join(map(str, VERSIONS))})"
            )
        if self.mode not in MODES:
            raise L2CError(
                f"schedule mode must be 'cache' or 'drop', got {self.mode!r}"
                + suggest(str(self.mode), MODES)
            )
        for name in ("model", "sampler"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise L2CError(f"schedule {name} must be a non-empty string")
        if not _is_int(self.depth) or not 1 <= self.depth <= MAX_DEPTH:
            raise L2CError(f"schedule depth must be a positive integer (at most {MAX_DEPTH}), got {self.depth!r}")
        if not _is_int(self.nfe) or not 1 <= self.nfe <= MAX_NFE:
            raise L2CError(f"schedule nfe must be a positive integer (at most {MAX_NFE}), got {self.nfe!r}")
        if self.threshold is not None:
            if (
                isinstance(self.threshold, bool)
                or not isinstance(self.threshold, int | float)
                or not 0.0 <= self.threshold <= 1.0
            ):
                raise L2CError(
                    f"schedule threshold must be in [0, 1] or null, got {self.threshold!r}"
                )
            object.__setattr__(self, "threshold", float(self.threshold))
        if not isinstance(self.source, dict):
            raise L2CError("schedule source must be a JSON object")
        try:  # a private, JSON-clean copy: later edits to the caller's dict cannot leak in
            object.__setattr__(self, "source", json.loads(json.dumps(self.source)))
        except (TypeError, ValueError) as exc:
            raise L2CError(f"schedule source is not JSON-serializable ({exc})") from None
        try:
            object.__setattr__(self, "kinds", check_kinds(self.kinds))
        except ValueError as exc:
            raise L2CError(f"schedule {exc}") from None
        if self.groups is not None:
            if not isinstance(self.groups, Layout):
                raise L2CError("schedule groups must be a Layout")
            if self.groups.depth != self.depth or self.groups.kinds != self.kinds:
                raise L2CError(
                    f"schedule groups {self.groups.to_json()} do not cover its {self.depth} blocks "
                    f"and kinds {list(self.kinds)}"
                )
            if self.groups.is_uniform:
                object.__setattr__(self, "groups", None)
        layout = self.layout
        calls = tuple(self.calls)
        object.__setattr__(self, "calls", calls)
        if not all(isinstance(c, CallSchedule) for c in calls):
            raise L2CError("schedule calls must be CallSchedule objects")
        if len(calls) != self.nfe:
            raise L2CError(f"schedule has {len(calls)} calls but nfe={self.nfe}")
        if [c.index for c in calls] != list(range(self.nfe)):
            raise L2CError("schedule call indices must be 0..nfe-1 in order")
        free = next((c for c in calls if c.trunk or (c.role != "cache" and any(c.mask))), None)
        if self.version is None:
            object.__setattr__(self, "version", 1 if free is None else 2)
        elif self.version == 1 and free is not None:
            what = "the trunk" if free.trunk else "sublayers"
            raise L2CError(f"call {free.index} is a {free.role} step but reuses {what} (a version 1 "
                           "schedule reuses only at cache steps; version 2 is free-form)")
        trunk_calls = [c.index for c in calls if c.trunk]
        if trunk_calls and self.mode != "cache":
            raise L2CError(f"call {trunk_calls[0]} reuses the trunk, which only a cache schedule can")
        if trunk_calls and all(c.trunk for c in calls[: trunk_calls[0] + 1]):
            raise L2CError(f"call {trunk_calls[0]} reuses the trunk before any earlier call ran the blocks")
        # Sublayers no call has computed yet: all of them before the first call (None), then
        # those every call so far reused. Tracking only these keeps the check O(listed ids)
        # rather than O(nfe × depth).
        never_computed: set[tuple[str, int]] | None = None
        for c in calls:
            if c.kinds != self.kinds:
                raise L2CError(
                    f"call {c.index} lists kinds {list(c.kinds)} but the schedule's are "
                    f"{list(self.kinds)}"
                )
            if c.trunk:
                continue  # computes no sublayer and reads none: the cache stays as it was
            reused = {(k, b) for k in self.kinds for b in c.reused(k)}
            bad = sorted(b for _, b in reused if b >= self.depth)
            if bad:
                raise L2CError(
                    f"call {c.index} reuses layer {bad[0]} but the model has "
                    f"{self.depth} blocks (ids 0..{self.depth - 1})"
                )
            if self.groups is not None:
                wrong = sorted((b, k) for k, b in reused if k not in layout.kinds_of(b))
                if wrong:
                    b, k = wrong[0]
                    raise L2CError(f"call {c.index} reuses {k} of block {b}, whose group has no {k} "
                                   f"(kinds {list(layout.kinds_of(b))})")
            # A dropped sublayer reads nothing, so only cache mode needs an earlier writer.
            early = sorted(reused if never_computed is None else reused & never_computed)
            if early and self.mode == "cache":
                kind, block = early[0]
                raise L2CError(
                    f"call {c.index} reuses {kind} of block {block} before any earlier "
                    "call computed it"
                )
            never_computed = reused if never_computed is None else never_computed & reused

    # -- views ---------------------------------------------------------------------------------

    @property
    def layout(self) -> Layout:
        """Which kinds each block has (every block all :attr:`kinds` unless :attr:`groups` says)."""
        return self.groups if self.groups is not None else Layout.uniform(self.depth, self.kinds)

    @property
    def cache_calls(self) -> tuple[CallSchedule, ...]:
        """The calls that may reuse, in sampling order: the plan's cache calls (version 1), every
        call after the first (version 2)."""
        if self.version == 1:
            return tuple(c for c in self.calls if c.role == "cache")
        return self.calls[1:]

    def mask(self, i: int) -> Mask:
        """Reused block ids per kind (in ``kinds`` order) of call ``i``."""
        return self.calls[i].mask

    def distinct_masks(self) -> tuple[Mask, ...]:
        """Distinct masks over all calls (the empty mask included), in order of first use."""
        return tuple(dict.fromkeys(c.mask for c in self.calls))

    def stats(self) -> dict[str, Any]:
        """Counts of reused sublayers (spec §5.1 columns). A trunk-reusing call skips every
        sublayer (counted under each kind and in ``trunk_calls``). ``cache_steps``: the calls that
        may reuse (:attr:`cache_calls`)."""
        cache_steps = len(self.cache_calls)
        layout = self.layout
        per_kind = {k: sum(len(layout.blocks(k)) if c.trunk else len(c.reused(k)) for c in self.calls)
                    for k in self.kinds}
        skipped = sum(per_kind.values())
        total = cache_steps * layout.width
        all_calls = self.nfe * layout.width
        trunk = {"trunk_calls": sum(c.trunk for c in self.calls)} if self.version >= 2 else {}
        return {
            "nfe": self.nfe,
            "cache_steps": cache_steps,
            **{f"skipped_{k}": n for k, n in per_kind.items()},
            **trunk,
            "skipped_total": skipped,
            "total_cache_sublayers": total,
            "skipped_fraction": skipped / total if total else 0.0,
            "skipped_fraction_all_calls": skipped / all_calls,
            "distinct_masks": len(self.distinct_masks()),
        }

    # -- checks --------------------------------------------------------------------------------

    def check_fits(self, layout: Layout, plan: SamplerPlan, model_name: str | None = None) -> None:
        """Raise ``L2CError`` (one line) unless this schedule fits a model whose blocks have
        ``layout`` and the sampler ``plan``: the one check every runner of a schedule makes
        (``compile``, the reference executor, the CLI, evaluation, ``compile_pipeline``).

        Checked in order: the model's name (only when ``model_name`` is given: a model compiled
        from a diffusers folder or built in a test names itself), the depth, the sublayer kinds
        and block groups, the sampler and NFE, then every call's role, timestep (to 1e-6
        relative, 1e-4 absolute) and router row, and that only cache calls reuse.
        """
        name = model_name or "this model"
        if model_name is not None and self.model != model_name:
            raise L2CError(f"schedule was made for {self.model} but the model is {model_name}")
        if self.depth != layout.depth:
            raise L2CError(f"schedule is for {self.depth} blocks but {name} has {layout.depth}")
        if self.kinds != layout.kinds:
            raise L2CError(f"schedule covers sublayer kinds {list(self.kinds)}, this model's blocks have "
                           f"{list(layout.kinds)}")
        if self.layout != layout:
            raise L2CError(f"schedule's block groups {self.layout.to_json()} differ from this model's "
                           f"{layout.to_json()}")
        if self.sampler != plan.sampler or self.nfe != plan.nfe:
            raise L2CError(
                f"schedule was made for {self.sampler} with {self.nfe} NFE but the "
                f"sampler plan is {plan.sampler} with {plan.nfe} NFE"
            )
        for c, pc in zip(self.calls, plan.calls, strict=True):
            if c.role != pc.role:
                raise L2CError(
                    f"call {c.index} is a {c.role} step in the schedule but a "
                    f"{pc.role} step in the {plan.sampler} plan"
                )
            if not math.isclose(c.timestep, float(pc.timestep), rel_tol=1e-6, abs_tol=1e-4):
                raise L2CError(
                    f"call {c.index} has timestep {c.timestep:g} in the schedule but "
                    f"{float(pc.timestep):g} in the {plan.sampler} plan"
                )
            if c.role == "cache" and c.router_index != pc.router_index:
                raise L2CError(
                    f"call {c.index} uses router row {c.router_index} in the schedule "
                    f"but {pc.router_index} in the {plan.sampler} plan"
                )
            if self.version == 1 and any(c.mask) and pc.role != "cache":
                raise L2CError(f"schedule reuses sublayers at call {c.index}, a full step of the {plan.sampler} plan")

    # -- constructors --------------------------------------------------------------------------

    @classmethod
    def all_compute(
        cls, model: str, depth: int, plan: SamplerPlan, kinds: tuple[str, ...] | Layout = DEFAULT_KINDS
    ) -> Schedule:
        """The schedule that reuses nothing (must match the uncached model). ``kinds``: the
        blocks' kinds, or a :class:`~l2c_compile.families.vocabulary.Layout` of block groups."""
        return _from_reuse(plan, model, depth, None, {"kind": "all-compute"}, {}, kinds=kinds)

    @classmethod
    def from_router(
        cls,
        logits: Any,
        plan: SamplerPlan,
        *,
        model: str,
        depth: int,
        threshold: float,
        source: dict[str, Any] | None = None,
        mode: str = "cache",
        kinds: tuple[str, ...] | Layout = DEFAULT_KINDS,
    ) -> Schedule:
        """Threshold router ``logits [rows, width]`` in the layout's entry order (K = ``len(kinds)``
        kinds in every block: entry ``K·i + k`` is kind ``k`` of block ``i``; a
        :class:`~l2c_compile.families.vocabulary.Layout`: block by block, each block's kinds): computed iff
        sigmoid(logit) > θ."""
        t = torch.as_tensor(logits).detach().to("cpu")
        layout = _layout(depth, kinds)
        k = len(layout.kinds)
        if t.dim() != 2:
            raise L2CError(f"router logits must be [rows, {k}*depth], got shape {list(t.shape)}")
        rows, width = int(t.shape[0]), int(t.shape[1])
        if width != layout.width:
            if not layout.is_uniform:
                raise L2CError(f"router has {width} entries per step but {model}'s block groups "
                               f"hold {layout.width} sublayers")
            raise L2CError(
                f"router has {width} entries per step but {model} has {depth} blocks of {k} "
                f"sublayers (needs {k * depth})"
            )
        if rows != plan.nfe:
            raise L2CError(f"router has {rows} steps but the sampler plan has {plan.nfe} NFE")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0.0 <= threshold <= 1.0
        ):
            raise L2CError(f"threshold must be in [0, 1], got {threshold!r}")
        # float32 like the official code, so θ is compared at the same precision
        computed = torch.sigmoid(t.float()) > threshold  # (rows, K·depth)
        reuse: dict[int, torch.Tensor] = {}
        for call in plan.calls:
            if call.role != "cache":
                continue
            r = call.router_index
            if r is None:
                raise L2CError(f"call {call.index} is a cache step without a router index")
            if not 0 <= r < rows:
                raise L2CError(
                    f"call {call.index} uses router row {r} but the router has {rows} steps"
                )
            reuse[call.index] = ~computed[r]
        src = {"kind": "router"} if source is None else source
        return _from_reuse(plan, model, depth, float(threshold), src, reuse, mode, kinds)

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict, format header first (``kinds`` only when not the two-kind default,
        so two-kind documents keep their bytes)."""
        head: dict[str, Any] = {
            "format": SCHEDULE_FORMAT,
            "version": self.version,
            "model": self.model,
            "depth": self.depth,
        }
        if self.kinds != DEFAULT_KINDS:
            head["kinds"] = list(self.kinds)
        if self.groups is not None:
            head["groups"] = self.groups.to_json()
        return head | {
            "sampler": self.sampler,
            "nfe": self.nfe,
            "threshold": self.threshold,
            "mode": self.mode,
            "source": self.source,
            "calls": [c.to_dict(self.version) for c in self.calls],
        }

    def to_json(self) -> str:
        """Readable, diff-friendly JSON: one header field per line and one call per line."""
        d = self.to_dict()
        calls = d.pop("calls")
        lines = [
            f"  {json.dumps(k)}: {json.dumps(v, sort_keys=(k == 'source'))}," for k, v in d.items()
        ]
        body = ",\n".join(f"    {json.dumps(c)}" for c in calls)
        return "{\n" + "\n".join(lines) + '\n  "calls": [\n' + body + "\n  ]\n}\n"

    @classmethod
    def from_dict(cls, d: Any) -> Schedule:
        """Inverse of :meth:`to_dict`; ``L2CError`` on wrong format, version or content."""
        if not isinstance(d, dict):
            raise L2CError(f"schedule must be a JSON object, got {type(d).__name__}")
        if d.get("format") != SCHEDULE_FORMAT:
            raise L2CError(f"not an {SCHEDULE_FORMAT} document (format={d.get('format')!r})")
        version = d.get("version")
        if not _is_int(version) or version not in VERSIONS:
            raise L2CError(
                f"unsupported {SCHEDULE_FORMAT} version {version!r} "
                f"(this l2c-compile reads versions {', '.join(map(str, VERSIONS))})"
            )
        keys = ("model", "depth", "sampler", "nfe", "threshold", "source", "calls")
        missing = [k for k in keys if k not in d]
        if missing:
            raise L2CError(f"schedule lacks {', '.join(missing)}")
        if not isinstance(d["calls"], list):
            raise L2CError("schedule calls must be a list")
        kinds = d.get("kinds", DEFAULT_KINDS)
        try:
            kinds = check_kinds(kinds)
            groups = Layout.from_json(d["groups"]) if "groups" in d else None
        except ValueError as exc:
            raise L2CError(f"schedule {exc}") from None
        calls = tuple(CallSchedule._from_dict(c, kinds, version) for c in d["calls"])
        return cls(
            model=d["model"],
            depth=d["depth"],
            sampler=d["sampler"],
            nfe=d["nfe"],
            threshold=d["threshold"],
            source=d["source"],
            calls=calls,
            version=version,
            mode=d.get("mode", "cache"),  # absent in documents written before drop mode existed
            kinds=kinds,
            groups=groups,
        )

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        """Parse :meth:`to_json` output (size and nesting capped, see :mod:`l2c_compile.inputs`)."""
        return cls.from_dict(parse_json(text, "schedule"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the JSON document atomically."""
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read a schedule file; ``L2CError`` when missing, malformed or inconsistent."""
        p = input_file(path, "schedule file")
        try:
            text = p.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            from l2c_compile.filekind import describe_file

            raise L2CError(
                f"{p} is {describe_file(p)}, not a schedule (the JSON file that `schedule import` or "
                "`schedule heuristic` writes); a router file goes through `schedule import`"
            ) from None
        except OSError as exc:
            raise L2CError(f"{p.name}: cannot read schedule ({exc})") from None
        try:
            return cls.from_json(text)
        except L2CError as exc:
            raise L2CError(f"{p.name}: {exc}") from None


def _from_reuse(
    plan: SamplerPlan,
    model: str,
    depth: int,
    threshold: float | None,
    source: dict[str, Any],
    reuse: dict[int, torch.Tensor],
    mode: str = "cache",
    kinds: tuple[str, ...] | Layout = DEFAULT_KINDS,
) -> Schedule:
    """Build a Schedule from per-call boolean reuse vectors ``[width]`` (router entry order)."""
    layout = _layout(depth, kinds)
    keys = layout.sublayer_keys()
    calls = []
    for c in plan.calls:
        r = reuse.get(c.index)
        ids = [] if r is None else [int(i) for i in torch.nonzero(r).flatten()]
        per_kind: dict[str, list[int]] = {kind: [] for kind in layout.kinds}
        for i in ids:
            kind, block = keys[i]
            per_kind[kind].append(block)
        calls.append(
            CallSchedule(
                index=c.index,
                timestep=float(c.timestep),
                role=c.role,
                router_index=c.router_index,
                reuse=per_kind,
            )
        )
    return Schedule(
        model=model,
        depth=depth,
        sampler=plan.sampler,
        nfe=plan.nfe,
        threshold=threshold,
        source=source,
        calls=tuple(calls),
        mode=mode,
        kinds=layout.kinds,
        groups=layout,
    )


def _layout(depth: int, kinds: tuple[str, ...] | Layout) -> Layout:
    """``kinds`` as a layout of ``depth`` blocks (a layout is taken as it is)."""
    if isinstance(kinds, Layout):
        if kinds.depth != depth:
            raise L2CError(f"sublayer groups cover {kinds.depth} blocks but the model has {depth}")
        return kinds
    try:
        return Layout.uniform(depth, check_kinds(kinds))
    except ValueError as exc:
        raise L2CError(f"schedule {exc}") from None


def _vocabulary_rank(kind: str) -> int:
    from l2c_compile.families.vocabulary import kinds

    known = kinds()
    return known.index(kind) if kind in known else len(known)


# ---------------------------------------------------------------------------------------------
# Router import and heuristic baselines
# ---------------------------------------------------------------------------------------------


def import_router(
    path: str | os.PathLike[str],
    plan: SamplerPlan,
    *,
    model: str,
    depth: int,
    threshold: float,
    spec: Any | None = None,
    kinds: tuple[str, ...] | Layout = DEFAULT_KINDS,
) -> Schedule:
    """Load a router file (any layout) and threshold it into a Schedule for ``plan``.

    Every fact the file carries about its target (model, resolution, classes, family, sampler
    and its options, NFE, depth, sublayer kinds; see :func:`~l2c_compile.schedule.router_files.router_facts`)
    is checked against ``model``/``depth``/``plan`` and the model's registry spec (``spec``, or
    looked up by ``model``); a mismatch is an :class:`L2CError`. The schedule's ``source`` lists
    the facts ``checked`` and those left ``unchecked`` because the file (or target) lacks them.
    The schedule's mode comes from the router's ``mode`` metadata (a learning-to-drop router
    gives a drop schedule); official files carry none and are cache routers.
    """
    p = Path(path)
    router = load_router(p)
    meta = router.meta
    target = router_target(model, depth, plan, spec, kinds)
    facts = check_router_target(router, p.name, target)
    mode = meta.get("mode", "cache")
    if mode not in MODES:
        raise L2CError(
            f"{p.name}: router metadata has unknown mode {mode!r}; expected cache or drop"
        )
    digest = hashlib.sha256(p.read_bytes()).hexdigest()
    source = {
        "kind": "router",
        "file": p.name,
        "sha256": digest,
        "format": meta.get("format"),
        **facts,
    }
    try:
        return Schedule.from_router(
            router.logits,
            plan,
            model=model,
            depth=depth,
            threshold=threshold,
            source=source,
            mode=mode,
            kinds=kinds,
        )
    except L2CError as exc:
        raise L2CError(f"{p.name}: {exc}") from None


def router_target(
    model: str,
    depth: int,
    plan: SamplerPlan,
    spec: Any | None = None,
    kinds: tuple[str, ...] | Layout = DEFAULT_KINDS,
) -> dict[str, Any]:
    """What a router for (``model``, ``depth``, ``plan``) must say, fact by fact.

    Model family, resolution and class count come from ``spec`` or the registry entry of
    ``model``; for a model outside the registry they stay unknown (and so unchecked).
    """
    if spec is None:
        from l2c_compile.models.registry import MODELS, get_spec

        spec = get_spec(model) if model in MODELS else None
    target: dict[str, Any] = {
        "model": model,
        "sampler": plan.sampler,
        "sampler_options": dict(plan.options),
        "nfe": plan.nfe,
        "depth": depth,
        "sublayers": list(_layout(depth, kinds).kinds),
        "layout": _layout(depth, kinds),
    }
    if spec is not None:
        side = int(spec.latent_shape[1])
        target["family"] = spec.family
        target["resolution"] = side if spec.pixel_space else side * 8  # SD VAE: 8× downsampling
        target["classes"] = int(spec.num_classes)
    return target


def heuristic(
    kind: str,
    plan: SamplerPlan,
    *,
    model: str,
    depth: int,
    fraction: float,
    seed: int = 0,
    mode: str = "cache",
    kinds: tuple[str, ...] | Layout = DEFAULT_KINDS,
) -> Schedule:
    """A paper baseline schedule: ``random``, ``top``, ``bottom`` or ``all`` skipped sublayers.

    ``mode="drop"`` drops them instead of reusing the cache (``random`` + drop = Random Drop).
    """
    if kind not in HEURISTICS:
        raise L2CError(
            f"unknown heuristic {kind!r}; choose from {', '.join(HEURISTICS)}"
            + suggest(kind, HEURISTICS)
        )
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, int | float)
        or not 0.0 <= fraction <= 1.0
    ):
        raise L2CError(f"heuristic fraction must be in [0, 1], got {fraction!r}")
    width = _layout(depth, kinds).width
    cache = [c.index for c in plan.calls if c.role == "cache"]
    reuse: dict[int, torch.Tensor] = {i: torch.zeros(width, dtype=torch.bool) for i in cache}
    if kind == "all":
        reuse = {i: torch.ones(width, dtype=torch.bool) for i in cache}
    elif kind == "random":
        n = len(cache) * width
        k = round(fraction * n)
        gen = torch.Generator().manual_seed(seed)
        flat = torch.zeros(n, dtype=torch.bool)
        flat[torch.randperm(n, generator=gen)[:k]] = True
        reuse = {i: flat[j * width : (j + 1) * width] for j, i in enumerate(cache)}
    else:
        k = round(fraction * width)
        # entries are ordered attn0, [cross0,] mlp0, attn1, ...: "top" counts down from the last MLP
        lo, hi = (width - k, width) if kind == "top" else (0, k)
        for r in reuse.values():
            r[lo:hi] = True
    source: dict[str, Any] = {"kind": "heuristic", "heuristic": kind, "fraction": float(fraction)}
    if kind == "random":
        source["seed"] = seed
    if kind == "all":
        source.pop("fraction")
    return _from_reuse(plan, model, depth, None, source, reuse, mode, kinds)
