"""Schedules from and to other caching tools: SmoothCache, InvarDiff cache books, cache-dit step masks.

Each reader turns a tool's file into a :class:`~l2c_compile.schedule.format.Schedule` for one
(model family, block layout, sampler plan); each writer turns a schedule back into the tool's
file. What a file cannot say exactly, or says ambiguously, is one :class:`L2CError` line, never a
silently different schedule. Sources: Roblox/SmoothCache ``smooth_cache_helper.py``,
zihaowu25/InvarDiff ``DiT/models/dynamic_cache.py`` and ``FLUX/dynamic_flux.py``, vipshop/cache-dit
``cache_manager.py`` and ``pattern_base.py`` (read, not copied; the study is in the README).

Step indexing: all three tools index **model calls** in sampling order (entry 0 = the first,
noisiest call): SmoothCache counts calls of each wrapped module, InvarDiff's DiT and FLUX runtimes
one row per forward, cache-dit one entry per transformer call (CFG batched). So a file has one
entry per call of the sampler plan (its NFE). For a sampler whose solver steps make several calls
(DPM-Solver-2: 2), a file with one entry per *solver step* is refused as ambiguous.

What a reuse reads:

* SmoothCache (``1`` = compute, ``0`` = reuse; keys ``<component>`` for every block or
  ``<component>-<i>`` for block ``i``, the per-block key winning; a module with no key always
  computes): the module's raw (pre-gate) output of its latest computed call; the current call's
  gate and residual apply. Exactly a sublayer reuse of a version 2 schedule. Components are the
  module attribute names the family declares (``KindDecl.path``: ``attn``/``mlp`` for DiT,
  ``attn1``/``attn2``/``ff`` for diffusers' DiT and PixArt). A block index is the index inside the
  one ``ModuleList`` of blocks, so per-block keys are refused for U-ViT (``in_blocks.3`` and
  ``out_blocks.3`` share index 3) and every family with several block groups.
* InvarDiff (``true`` = reuse): per-module books ``[steps][blocks]`` read the module's latest
  computed raw output, like SmoothCache; ``step_cache_book[t]`` skips every block and substitutes
  the last block's output of the latest call that ran the blocks, before the final layer, which
  runs with the current call's conditioning: exactly ``CallSchedule.trunk``. At a gated step the
  module rows are not read (InvarDiff ignores them; its writer fills them with ``true``, and so
  does :func:`export_schedule`). Book names come from ``KindDecl.invardiff``.
* cache-dit (``steps_computation_mask``: ``1`` = compute, ``0`` = may cache): a cached step runs
  the first ``Fn`` blocks and adds the stored *residual* ``Mn_out − Mn_in`` of the middle blocks
  of the latest computed step, then runs the last ``Bn`` blocks. No schedule here computes that,
  so the reader refuses a mask unless asked for ``as_trunk=True``, which imports its cadence with
  each ``0`` as a trunk reuse (the latest computed trunk *output*, not the residual on top of this
  call's first blocks): the same calls compute, but the cached calls are a different
  approximation. Opt-in because it is one; the schedule's source says ``"semantics":
  "trunk-output"``. A ``"dynamic"`` policy (a 0 only allows caching) and policy names
  (``"fast"``…, expanded by cache-dit's own code) fix no schedule and are refused.

Imported schedules carry ``source = {"kind": <format>, "file": <name>, "sha256": <hex>}``; their
version is the lowest that holds the calls (:class:`Schedule`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from l2c_compile.errors import L2CError, suggest
from l2c_compile.families.base import BlockGroup, Family
from l2c_compile.families.vocabulary import Layout, kind_name
from l2c_compile.inputs import input_file, parse_json
from l2c_compile.io import write_text_atomic
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule.format import CallSchedule, Schedule

__all__ = [
    "FORMATS",
    "ImportTarget",
    "export_schedule",
    "export_text",
    "family_for_model",
    "import_schedule",
    "invardiff_names",
    "save_export",
    "smoothcache_names",
]

FORMATS = ("smoothcache", "invardiff", "cachedit")
_LABELS = {"smoothcache": "SmoothCache schedule", "invardiff": "InvarDiff cache book", "cachedit": "cache-dit mask"}
STEP_KEYS = ("step_cache_book", "step_cache_bool")  # InvarDiff's trunk gate (DiT/FLUX; Wan writes the second)
_FLUX_BOOKS = ("transformer_cache_book", "single_transformer_cache_book")
CACHEDIT_SEMANTICS = (
    "cache-dit's cached steps add the middle blocks' residual of the latest computed step to this "
    "step's first blocks' output, which no l2c-compile schedule computes"
)

Reuse = list[dict[str, set[int]]]  # per call: {kind: reused block ids}


@dataclass(frozen=True)
class ImportTarget:
    """What a file is imported for: the model's name, family, block layout and sampler plan."""

    model: str
    family: Family
    layout: Layout
    plan: SamplerPlan


# ---------------------------------------------------------------------------------------------
# The name table: derived from the family declaration
# ---------------------------------------------------------------------------------------------


def _fits(group: BlockGroup, kinds: Sequence[str]) -> bool:
    """Whether a block with ``kinds`` can belong to ``group``: only declared kinds, every required one."""
    declared = {k.kind for k in group.kinds}
    required = {k.kind for k in group.kinds if not k.optional}
    return set(kinds) <= declared and required <= set(kinds)


def _group_spans(family: Family, layout: Layout) -> list[tuple[BlockGroup, tuple[int, ...]]]:
    """Each declared block group with the global ids of its blocks in ``layout``.

    The layout's phases (runs of blocks with the same kinds: SD3.5's dual-attention blocks, SD3's
    last block without a text MLP) are given to the declared groups in order. L2CError where a
    group has no block or a phase fits no group.
    """
    spans: list[list[int]] = [[] for _ in family.groups]
    g, start = 0, 0
    for count, kinds in layout.groups:
        while g < len(family.groups) and not _fits(family.groups[g], kinds):
            g += 1
        if g == len(family.groups):
            raise L2CError(f"family {family.name} declares no block group whose blocks have {list(kinds)} "
                           f"(blocks {start}..{start + count - 1} of the model's layout {layout.to_json()})")
        spans[g].extend(range(start, start + count))
        start += count
    empty = next((i for i, ids in enumerate(spans) if not ids), None)
    if empty is not None:
        raise L2CError(f"family {family.name} declares {len(family.groups)} block groups but the model's layout "
                       f"has no block of group {empty} ({layout.to_json()})")
    return [(group, tuple(ids)) for group, ids in zip(family.groups, spans, strict=True)]


def smoothcache_names(family: Family, layout: Layout) -> tuple[dict[str, str], bool]:
    """``({component: kind}, per-block keys meaningful)`` for SmoothCache files of ``family``.

    A component is the attribute name of the sublayer's module in its block (the last part of
    ``KindDecl.path``), as SmoothCache splits the wrapped module's name. Per-block keys
    (``attn-3``) name the index in the one ``ModuleList`` of blocks; for blocks spread over several
    modules (U-ViT) that index is ambiguous. L2CError for several block groups: the keys cannot
    tell them apart (FLUX's ``transformer_blocks.0.attn`` and ``single_transformer_blocks.0.attn``
    are both ``attn-0``).
    """
    spans = _group_spans(family, layout)
    if len(spans) > 1:
        raise L2CError(f"SmoothCache keys cannot tell {family.name}'s {len(spans)} block groups apart "
                       "(a key names a module attribute and an index inside its block list)")
    group = spans[0][0]
    names = {k.path.rsplit(".", 1)[-1]: k.kind for k in group.kinds if k.kind in layout.kinds}
    return names, len(group.blocks) == 1


def invardiff_names(family: Family, layout: Layout) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """``{book path: (kind, block ids of its columns, decides)}`` for ``family``'s InvarDiff books.

    ``decides``: the book is the first declared for its sublayer (the others must agree with it).
    L2CError naming a kind the family gives no InvarDiff name.
    """
    out: dict[str, tuple[str, tuple[int, ...], bool]] = {}
    for group, blocks in _group_spans(family, layout):
        for k in group.kinds:
            if k.kind not in layout.kinds:
                continue  # an optional kind no block of this model has
            if not k.invardiff:
                raise L2CError(f"InvarDiff has no cache book for {family.name}'s {kind_name(k.kind)} "
                               f"(module {k.path}); the family declares none")
            for j, path in enumerate(k.invardiff):
                out[path] = (k.kind, blocks, j == 0)
    return out


# ---------------------------------------------------------------------------------------------
# Checks shared by the readers
# ---------------------------------------------------------------------------------------------


def _check_length(n: int, plan: SamplerPlan, what: str) -> None:
    """One entry per model call of ``plan``; a per-solver-step count is named as such."""
    if n == plan.nfe:
        return
    per_step = {len(s.calls) for s in plan.steps}
    if n == len(plan.steps) and per_step != {1}:
        raise L2CError(f"{what} has {n} entries, one per {plan.sampler} solver step, but these tools count "
                       f"model calls and the plan makes {plan.nfe} (a step is {max(per_step)} calls); "
                       "ambiguous, refused: write one entry per model call")
    raise L2CError(f"{what} has {n} entries but the {plan.sampler} plan has {plan.nfe} model calls (NFE)")


def _flags(values: Any, plan: SamplerPlan, what: str, allowed: tuple[Any, ...]) -> list[Any]:
    """``values`` as a list of one of ``allowed`` per model call of ``plan``."""
    if not isinstance(values, list):
        raise L2CError(f"{what} must be a list with one entry per model call, got {type(values).__name__}")
    bad = next((v for v in values if type(v) not in {type(a) for a in allowed} or v not in allowed), _MISSING)
    if bad is not _MISSING:
        raise L2CError(f"{what} holds {bad!r}; entries must be {' or '.join(json.dumps(a) for a in allowed)}")
    _check_length(len(values), plan, what)
    return values


_MISSING = object()


def _read(path: str | os.PathLike[str], fmt: str) -> tuple[Any, dict[str, Any]]:
    """The parsed document and its ``source`` record; YAML for a cache-dit ``.yaml``/``.yml``."""
    p = input_file(path, _LABELS[fmt])
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise L2CError(f"{p.name}: cannot read the {_LABELS[fmt]} ({exc.strerror or exc})") from None
    if fmt == "cachedit" and p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise L2CError(f"{p.name}: not a YAML cache-dit config ({str(exc).splitlines()[0]})") from None
    else:
        doc = parse_json(data, f"{p.name} ({_LABELS[fmt]})")
    return doc, {"kind": fmt, "file": p.name, "sha256": hashlib.sha256(data).hexdigest()}


def _build(target: ImportTarget, reuse: Reuse, trunk: Sequence[bool], source: dict[str, Any],
           version: int | None = None) -> Schedule:
    """A cache-mode Schedule with ``plan``'s roles and router rows and the given reuse."""
    layout = target.layout
    calls = tuple(
        CallSchedule(c.index, float(c.timestep), c.role, c.router_index,
                     reuse={k: sorted(reuse[c.index].get(k, ())) for k in layout.kinds}, trunk=bool(trunk[c.index]))
        for c in target.plan.calls
    )
    return Schedule(model=target.model, depth=layout.depth, sampler=target.plan.sampler, nfe=target.plan.nfe,
                    threshold=None, source=source, calls=calls, version=version, kinds=layout.kinds, groups=layout)


# ---------------------------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"(?P<comp>.+)-(?P<block>\d+)")


def _read_smoothcache(doc: Any, target: ImportTarget) -> tuple[Reuse, list[bool]]:
    fam, layout, plan = target.family, target.layout, target.plan
    if not isinstance(doc, dict) or not doc:
        raise L2CError("a SmoothCache schedule is a JSON object mapping component keys ('attn', 'mlp-3') "
                       "to lists of 1 (compute) and 0 (reuse)")
    names, indexed = smoothcache_names(fam, layout)
    shared: dict[str, list[int]] = {}
    per_block: dict[tuple[str, int], list[int]] = {}
    for key, values in doc.items():
        m = _BLOCK_KEY.fullmatch(key)
        comp, block = (m["comp"], int(m["block"])) if m and m["comp"] in names else (key, None)
        if comp not in names:
            raise L2CError(f"unknown SmoothCache component {comp!r} (key {key!r}); {fam.name}'s are "
                           + ", ".join(f"{c} ({kind_name(k)})" for c, k in names.items()) + suggest(comp, tuple(names)))
        flags = _flags(values, plan, f"key {key!r}", (0, 1))
        if block is None:
            shared[comp] = flags
            continue
        if not indexed:
            raise L2CError(f"key {key!r} names a block by its index in a block list, which is ambiguous for "
                           f"{fam.name} (blocks {', '.join(fam.groups[0].blocks)}); use the shared key {comp!r}")
        if block >= layout.depth:
            raise L2CError(f"key {key!r} names block {block} but the model has {layout.depth} blocks "
                           f"(ids 0..{layout.depth - 1})")
        per_block[(comp, block)] = flags
    reuse: Reuse = [{} for _ in range(plan.nfe)]
    for comp, kind in names.items():
        for b in layout.blocks(kind):
            flags = per_block.get((comp, b), shared.get(comp))  # SmoothCache: per-block key first
            for i, v in enumerate(flags or ()):
                if v == 0:
                    reuse[i].setdefault(kind, set()).add(b)
    return reuse, [False] * plan.nfe


def _books(doc: dict[str, Any]) -> dict[str, Any]:
    """Every leaf table of an InvarDiff file (its step gate aside), by dotted path."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key in STEP_KEYS:
            continue
        if isinstance(value, dict):
            out |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            out[key] = value
    return out


def _read_invardiff(doc: Any, target: ImportTarget) -> tuple[Reuse, list[bool]]:
    fam, layout, plan = target.family, target.layout, target.plan
    if not isinstance(doc, dict):
        raise L2CError("an InvarDiff cache book is a JSON object (step_cache_book and per-module books)")
    steps = [k for k in STEP_KEYS if k in doc]
    if not steps:
        raise L2CError("the cache book lacks step_cache_book (InvarDiff's per-call trunk gate)")
    if len(steps) == 2 and doc[steps[0]] != doc[steps[1]]:
        raise L2CError("the cache book has both step_cache_book and step_cache_bool, and they differ")
    trunk = _flags(doc[steps[0]], plan, steps[0], (False, True))
    names = invardiff_names(fam, layout)
    books = _books(doc)
    unknown = sorted(set(books) - set(names))
    if unknown:
        flux = any(u.split(".")[0] in _FLUX_BOOKS for u in unknown) and not any(
            n.split(".")[0] in _FLUX_BOOKS for n in names)
        raise L2CError(f"unknown InvarDiff book {unknown[0]!r} for family {fam.name} (its books: "
                       f"{', '.join(names)})" + ("; these are InvarDiff's FLUX books: import them for a FLUX model "
                                                 "(--diffusers with a FLUX.1 folder)" if flux else suggest(unknown[0], tuple(names))))
    missing = [n for n in names if n not in books]
    if missing:
        raise L2CError(f"the cache book lacks {missing[0]!r} ({kind_name(names[missing[0]][0])} of {fam.name})")
    reuse: Reuse = [{} for _ in range(plan.nfe)]
    tables: dict[tuple[str, tuple[int, ...]], tuple[str, list[list[bool]]]] = {}
    for path, (kind, blocks, decides) in names.items():
        if decides:
            tables[(kind, blocks)] = (path, _table(books[path], plan, path, len(blocks)))
    for path, (kind, blocks, decides) in names.items():
        if decides:
            continue
        first, rows = tables[(kind, blocks)]
        other = _table(books[path], plan, path, len(blocks))
        diff = next(((t, j) for t in range(plan.nfe) if not trunk[t] for j in range(len(blocks))
                     if rows[t][j] != other[t][j]), None)
        if diff is not None:
            raise L2CError(f"{path} and {first} differ at step {diff[0]}, block {blocks[diff[1]]}; InvarDiff reuses "
                           f"that {kind_name(kind)} only when both are true, so this book is ambiguous, refused")
    for (kind, blocks), (_, rows) in tables.items():
        for t in range(plan.nfe):
            if not trunk[t]:
                reuse[t].setdefault(kind, set()).update(
                    b for b, r in zip(blocks, rows[t], strict=True) if r and kind in layout.kinds_of(b))
    if trunk and trunk[0]:
        raise L2CError(f"{steps[0]}[0] is true, but the first call has no earlier trunk output to reuse")
    return reuse, trunk


def _table(value: Any, plan: SamplerPlan, path: str, width: int) -> list[list[bool]]:
    """An InvarDiff ``[steps][blocks]`` table of booleans with ``width`` columns."""
    if not isinstance(value, list):
        raise L2CError(f"{path} must be a [steps][blocks] table of true/false, got {type(value).__name__}")
    _check_length(len(value), plan, path)
    for t, row in enumerate(value):
        if not isinstance(row, list) or len(row) != width or not all(isinstance(v, bool) for v in row):
            got = f"{len(row)} entries" if isinstance(row, list) else type(row).__name__
            raise L2CError(f"{path}[{t}] must be {width} true/false entries (one per block), got "
                           + (got if not isinstance(row, list) or len(row) != width else "non-booleans"))
    return value


def _read_cachedit(doc: Any, target: ImportTarget, as_trunk: bool) -> tuple[Reuse, list[bool]]:
    plan = target.plan
    if not as_trunk:
        raise L2CError(f"{CACHEDIT_SEMANTICS}; to import the mask's cadence with each 0 as a trunk reuse "
                       "(the latest computed trunk output) instead, ask for it (--cachedit-as-trunk)")
    if isinstance(doc, dict) and isinstance(doc.get("cache_config"), dict):
        doc = doc["cache_config"]
    policy = "static"
    if isinstance(doc, dict):
        if "steps_computation_mask" not in doc:
            raise L2CError("the cache-dit config has no steps_computation_mask")
        policy = doc.get("steps_computation_policy", "static")
        doc = doc["steps_computation_mask"]
    if isinstance(doc, str):
        raise L2CError(f"steps_computation_mask is the policy name {doc!r}, which cache-dit's steps_mask expands; "
                       "give the expanded list of 1/0 instead")
    if policy != "static":
        raise L2CError(f"steps_computation_policy is {policy!r}: a 0 then only allows caching (cache-dit decides "
                       "at run time), so the mask fixes no schedule; only 'static' masks import")
    mask = _flags(doc, plan, "steps_computation_mask", (0, 1))
    if mask[0] == 0:
        raise L2CError("steps_computation_mask[0] is 0, but the first call has nothing cached (cache-dit "
                       "needs it computed)")
    return [{} for _ in range(plan.nfe)], [v == 0 for v in mask]


def import_schedule(path: str | os.PathLike[str], fmt: str, target: ImportTarget, *,
                    cachedit_as_trunk: bool = False) -> Schedule:
    """Read a ``fmt`` file (``smoothcache``, ``invardiff``, ``cachedit``) into a Schedule for
    ``target``; L2CError (one line, starting with the file's name) for anything it cannot map
    exactly: length ≠ NFE, blocks or kinds the family lacks, unknown component names, a reuse
    before anything was computed. ``cachedit_as_trunk``: see the module docstring."""
    if fmt not in FORMATS:
        raise L2CError(f"unknown schedule format {fmt!r}; choose from {', '.join(FORMATS)}" + suggest(fmt, FORMATS))
    doc, source = _read(path, fmt)
    try:
        if fmt == "smoothcache":
            reuse, trunk = _read_smoothcache(doc, target)
        elif fmt == "invardiff":
            reuse, trunk = _read_invardiff(doc, target)
        else:
            reuse, trunk = _read_cachedit(doc, target, cachedit_as_trunk)
            source["semantics"] = "trunk-output"  # not cache-dit's residual: see the module docstring
        return _build(target, reuse, trunk, source)
    except L2CError as exc:
        raise L2CError(f"{source['file']}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def family_for_model(model: str) -> Family:
    """The family of registry model ``model``; L2CError when the name is not in the registry."""
    from l2c_compile.families import get_family
    from l2c_compile.models.registry import MODELS, get_spec

    if model not in MODELS:
        raise L2CError(f"cannot tell the model family of {model!r} (not a registry model); name the family")
    return get_family(get_spec(model).family)


def _check_exportable(schedule: Schedule, fmt: str) -> None:
    if fmt not in FORMATS:
        raise L2CError(f"unknown schedule format {fmt!r}; choose from {', '.join(FORMATS)}" + suggest(fmt, FORMATS))
    if schedule.mode != "cache":
        raise L2CError(f"a {schedule.mode} schedule drops sublayers, which {_LABELS[fmt]}s cannot express "
                       "(they only reuse)")


def _export_smoothcache(schedule: Schedule, family: Family) -> dict[str, list[int]]:
    trunk = next((c.index for c in schedule.calls if c.trunk), None)
    if trunk is not None:
        raise L2CError(f"call {trunk} reuses the whole trunk, which SmoothCache cannot express (it caches "
                       "single modules); InvarDiff's step_cache_book can")
    names, indexed = smoothcache_names(family, schedule.layout)
    out: dict[str, list[int]] = {}
    per_kind = {}
    for comp, kind in names.items():
        blocks = schedule.layout.blocks(kind)
        lists = {b: [0 if b in c.reused(kind) else 1 for c in schedule.calls] for b in blocks}
        per_kind[comp] = lists
        if len({tuple(v) for v in lists.values()}) > 1 and not indexed:
            raise L2CError(f"the schedule reuses different {kind_name(kind)} blocks per call, which needs "
                           f"per-block keys, and those are ambiguous for {family.name}")
    if all(len({tuple(v) for v in lists.values()}) == 1 for lists in per_kind.values()):
        return {comp: next(iter(lists.values())) for comp, lists in per_kind.items()}
    for b in range(schedule.depth):  # block by block, as SmoothCache's own per-block files
        for comp, lists in per_kind.items():
            if b in lists:
                out[f"{comp}-{b}"] = lists[b]
    return out


def _export_invardiff(schedule: Schedule, family: Family) -> dict[str, Any]:
    out: dict[str, Any] = {STEP_KEYS[0]: [c.trunk for c in schedule.calls]}
    for path, (kind, blocks, _) in invardiff_names(family, schedule.layout).items():
        rows = [[c.trunk or b in c.reused(kind) for b in blocks] for c in schedule.calls]
        book, _, leaf = path.partition(".")
        if leaf:
            out.setdefault(book, {})[leaf] = rows
        else:
            out[book] = rows
    return out


def _export_cachedit(schedule: Schedule, as_trunk: bool) -> dict[str, Any]:
    if not as_trunk:
        raise L2CError(f"{CACHEDIT_SEMANTICS}; a mask of this schedule's trunk calls is an approximation: "
                       "ask for it (--cachedit-as-trunk)")
    partial = next((c.index for c in schedule.calls if not c.trunk and c.reuses), None)
    if partial is not None:
        raise L2CError(f"call {partial} reuses single sublayers, which a cache-dit step mask cannot express "
                       "(a step either computes or is cached whole)")
    return {"steps_computation_mask": [0 if c.trunk else 1 for c in schedule.calls],
            "steps_computation_policy": "static"}


def export_schedule(schedule: Schedule, fmt: str, *, family: Family | str | None = None,
                    cachedit_as_trunk: bool = False) -> dict[str, Any]:
    """``schedule`` as a ``fmt`` document (a JSON-able dict); L2CError (one line) for what the
    format cannot express: a drop schedule (all), trunk reuse (SmoothCache), single sublayers
    (cache-dit), per-block differences where per-block keys are ambiguous (SmoothCache on U-ViT),
    several block groups (SmoothCache). ``family``: the model family (name or record; default:
    the registry's family of ``schedule.model``)."""
    from l2c_compile.families import get_family

    _check_exportable(schedule, fmt)
    fam = family_for_model(schedule.model) if family is None else (
        get_family(family) if isinstance(family, str) else family)
    if fmt == "smoothcache":
        return _export_smoothcache(schedule, fam)
    if fmt == "invardiff":
        return _export_invardiff(schedule, fam)
    return _export_cachedit(schedule, cachedit_as_trunk)


def export_text(doc: dict[str, Any]) -> str:
    """A tool document as JSON text: one top-level key per line (a nested book: one leaf per line)."""
    def line(key: str, value: Any, pad: str) -> str:
        if isinstance(value, dict):
            inner = ",\n".join(line(k, v, pad + "  ") for k, v in value.items())
            return f"{pad}{json.dumps(key)}: {{\n{inner}\n{pad}}}"
        return f"{pad}{json.dumps(key)}: {json.dumps(value)}"

    return "{\n" + ",\n".join(line(k, v, "  ") for k, v in doc.items()) + "\n}\n"


def save_export(schedule: Schedule, fmt: str, path: str | os.PathLike[str], **options: Any) -> dict[str, Any]:
    """Write :func:`export_schedule`'s document to ``path`` atomically (nothing is written on an
    error); returns the document."""
    doc = export_schedule(schedule, fmt, **options)
    write_text_atomic(Path(path), export_text(doc))
    return doc
