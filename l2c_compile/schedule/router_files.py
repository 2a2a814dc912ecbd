"""Router files: the two official Learning-to-Cache layouts and l2c-compile's own.

A router is a table of logits ``[rows, 2*depth]``: row ``i`` belongs to router index ``i`` (the
sampler decides which model call uses which row), entry ``2*l`` is the attention sublayer of
block ``l`` and entry ``2*l+1`` its MLP (spec §2). Models with more sublayer kinds per block
(PixArt: attention, cross-attention, MLP) have ``[rows, K*depth]`` with the kinds interleaved per
block (entry ``K*l + k``); only l2c-router files hold them, and their metadata's ``sublayers``
names the kinds (a file without it is two-kind, as every file written before). A model whose
block groups have different kinds (a FLUX-shaped family) lays its entries out block by block,
each block's kinds in order, and its metadata adds ``groups`` (``[[count, [kinds…]], …]``,
:class:`~l2c_compile.families.vocabulary.Layout`). Three file
layouts are read:

* official DiT (``horseee/learning-to-cache`` DiT): a ``torch.save`` dict
  ``{"routers": {"{i}.prob": [2*depth]}, "opt": AdamW state, "args": argparse.Namespace}``;
* official U-ViT: a bare ``{"{i}.prob": [2*depth]}`` dict;
* ``l2c-router`` (ours): safetensors with one tensor ``logits`` and string metadata.

Everything is loaded without executing pickled code: safetensors, or ``torch.load`` with
``weights_only=True`` and exactly ``argparse.Namespace`` allowed for the DiT files.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2c_compile.errors import L2CError, suggest
from l2c_compile.families import FAMILIES
from l2c_compile.families.vocabulary import DEFAULT_KINDS, Layout, check_kinds
from l2c_compile.inputs import input_file, parse_json
from l2c_compile.io import atomic_path, write_bytes_atomic

ROUTER_FORMAT = "l2c-router"
ROUTER_VERSION = 1
# The families whose official code writes router files, and the layout each writes.
OFFICIAL_LAYOUTS = {f.name: f.router_layout for f in FAMILIES.values() if f.router_layout is not None}
OFFICIAL_FAMILIES = tuple(OFFICIAL_LAYOUTS)  # ("dit", "uvit")
_REQUIRED_META = ("model", "sampler", "nfe")
_PROB_KEY = re.compile(r"^(\d+)\.prob$")
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class RouterFile:
    """Router logits ``[rows, K*depth]`` (float32; K = 2 kinds unless ``meta["sublayers"]`` names more)
    and what the file says about them."""

    logits: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def rows(self) -> int:
        """Number of router rows (one per router index)."""
        return int(self.logits.shape[0])

    @property
    def kinds(self) -> tuple[str, ...]:
        """The sublayer kinds each block has, in entry order (``("attn", "mlp")`` unless the
        metadata's ``sublayers`` says otherwise)."""
        kinds = self.meta.get("sublayers", SUBLAYERS)
        return tuple(kinds) if isinstance(kinds, list | tuple) else SUBLAYERS

    @property
    def layout(self) -> Layout:
        """Which kinds each block has: the metadata's ``groups``, else every block has :attr:`kinds`."""
        if "groups" in self.meta:
            return Layout.from_json(self.meta["groups"])
        return Layout.uniform(int(self.logits.shape[1]) // len(self.kinds), self.kinds)

    @property
    def depth(self) -> int:
        """Number of blocks the router covers (its width over the number of kinds)."""
        return self.layout.depth


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_router(path: str | os.PathLike[str]) -> RouterFile:
    """Read a router in any supported layout; ``L2CError`` for a missing, corrupt or unknown file."""
    p = input_file(path, "router file")
    with p.open("rb") as fh:
        head = fh.read(9)
    if _looks_like_safetensors(head):
        return _load_own(p)
    return _load_official(p, head)


def _looks_like_safetensors(head: bytes) -> bool:
    # safetensors: 8-byte little-endian header length, then a JSON header starting with "{".
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _load_own(p: Path) -> RouterFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt") as fh:
            raw_meta = fh.metadata() or {}
            names = list(fh.keys())
            if "logits" not in names:
                raise L2CError(f"{p.name}: safetensors file has no 'logits' tensor (has {names})")
            logits = fh.get_tensor("logits")
    except SafetensorError as exc:
        raise L2CError(f"{p.name}: corrupt safetensors router file ({_one_line(exc)})") from None
    if raw_meta.get("format") != ROUTER_FORMAT:
        raise L2CError(
            f"{p.name}: safetensors file is not an {ROUTER_FORMAT} file "
            f"(format={raw_meta.get('format')!r})"
        )
    try:
        meta = {k: _decode_meta(v) for k, v in raw_meta.items()}
    except L2CError as exc:
        raise L2CError(f"{p.name}: {exc}") from None
    if meta.get("version") != ROUTER_VERSION:
        raise L2CError(
            f"{p.name}: unsupported {ROUTER_FORMAT} version {meta.get('version')!r} "
            f"(this l2c-compile reads version {ROUTER_VERSION})"
        )
    logits = _check_logits(logits, p.name, _meta_kinds(meta, p.name))
    _check_meta(meta, logits, p.name)
    _check_groups(meta, logits, p.name)
    return RouterFile(logits, meta)


def _check_groups(meta: dict[str, Any], logits: torch.Tensor, name: str) -> None:
    """L2CError unless a file with block ``groups`` has exactly their number of entries per row."""
    if "groups" in meta:
        width = Layout.from_json(meta["groups"]).width
        if int(logits.shape[1]) != width:
            raise L2CError(f"{name}: router has {logits.shape[1]} entries per step but its groups hold {width}")


def _meta_kinds(meta: dict[str, Any], name: str) -> int:
    """How many sublayer kinds the metadata names (2 when it names none); L2CError for a bad list
    (or bad ``groups``)."""
    try:
        if "groups" in meta:
            layout = Layout.from_json(meta["groups"])
            if list(layout.kinds) != list(meta.get("sublayers", ())):
                raise ValueError(f"groups {layout.to_json()} do not cover the sublayers {meta.get('sublayers')}")
            return 1  # the groups fix the width exactly (_check_groups)
        if "sublayers" not in meta:
            return len(SUBLAYERS)
        return len(check_kinds(meta["sublayers"]))
    except ValueError as exc:
        raise L2CError(f"{name}: router metadata: {exc}") from None


def router_layout_meta(layout: Layout) -> dict[str, Any]:
    """The metadata that records ``layout`` in an l2c-router file: nothing for attention and MLP in
    every block (as files always were), ``sublayers`` for other kinds, and ``groups`` when the
    blocks differ."""
    out: dict[str, Any] = {}
    if layout.kinds != SUBLAYERS or not layout.is_uniform:
        out["sublayers"] = list(layout.kinds)
    if not layout.is_uniform:
        out["groups"] = layout.to_json()
    return out


def _load_official(p: Path, head: bytes) -> RouterFile:
    try:
        # The DiT files pickle their argparse.Namespace; allow exactly that class, only here.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad pickles/zips; all mean "unreadable"
        from l2c_compile.filekind import torch_load_problem

        with p.open("rb") as fh:
            head = fh.read(512)
        raise L2CError(
            f"{p.name}: not a router file: {torch_load_problem(exc, head)} (expected an official "
            "DiT/U-ViT router .pt/.pth or an l2c-router .safetensors)"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("routers"), dict):
        logits = _stack_probs(obj["routers"], p.name)
        meta: dict[str, Any] = {"format": "dit-official", "family": "dit"}
        args = obj.get("args")
        if isinstance(args, argparse.Namespace):
            meta["args"] = {k: _jsonable(v) for k, v in vars(args).items()}
            if isinstance(getattr(args, "model", None), str):
                meta["model"] = args.model
            if isinstance(getattr(args, "num_sampling_steps", None), int):
                meta["nfe"] = args.num_sampling_steps
        return RouterFile(logits, meta)
    if (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and _PROB_KEY.match(k) for k in obj)
    ):
        return RouterFile(_stack_probs(obj, p.name), {"format": "uvit-official", "family": "uvit"})
    keys = sorted(map(str, obj))[:5] if isinstance(obj, dict) else type(obj).__name__
    raise L2CError(
        f"{p.name}: unknown router format (expected DiT {{'routers': ...}} or U-ViT "
        f"{{'0.prob': ...}}; found {keys})"
    )


def _stack_probs(probs: dict[str, Any], name: str) -> torch.Tensor:
    """Stack ``{"{i}.prob": [2*depth]}`` into ``[rows, 2*depth]``, insisting on rows 0..n-1."""
    rows: dict[int, torch.Tensor] = {}
    for key, value in probs.items():
        m = _PROB_KEY.match(str(key))
        if m is None or not isinstance(value, torch.Tensor) or value.dim() != 1:
            raise L2CError(
                f"{name}: unexpected router entry {key!r} (want '{{i}}.prob' -> 1-D tensor)"
            )
        rows[int(m.group(1))] = value
    if not rows or sorted(rows) != list(range(len(rows))):
        raise L2CError(f"{name}: router rows must be numbered 0..n-1, found {sorted(rows)[:8]}")
    widths = {int(v.shape[0]) for v in rows.values()}
    if len(widths) != 1:
        raise L2CError(f"{name}: router rows have different widths {sorted(widths)}")
    logits = torch.stack([rows[i].detach().float() for i in range(len(rows))])  # (rows, 2*depth)
    return _check_logits(logits, name)


def _check_logits(logits: Any, name: str, kinds: int = 2) -> torch.Tensor:
    """Return ``logits`` as a contiguous float32 CPU tensor ``[rows, kinds*depth]`` or raise."""
    t = torch.as_tensor(logits)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0 or t.shape[1] % kinds:
        raise L2CError(
            f"{name}: router logits must be [rows, {kinds}*depth], got shape {list(t.shape)}"
        )
    if not t.is_floating_point():
        raise L2CError(f"{name}: router logits must be floating point, got {t.dtype}")
    t = t.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise L2CError(f"{name}: router logits contain NaN or infinity")
    return t


def _check_meta(meta: dict[str, Any], logits: torch.Tensor, name: str) -> None:
    missing = [k for k in _REQUIRED_META if k not in meta]
    if missing:
        raise L2CError(f"{name}: router metadata lacks {', '.join(missing)}")
    nfe = meta["nfe"]
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe != logits.shape[0]:
        raise L2CError(
            f"{name}: router metadata says nfe={nfe!r} but it has {logits.shape[0]} rows"
        )


def _decode_meta(value: str) -> Any:
    # Non-strings were stored as JSON; a value that parses to a string was a plain string.
    not_json = object()
    decoded = parse_json(value, "router metadata", invalid=not_json)
    if decoded is not_json:
        return value
    return value if isinstance(decoded, str) else decoded


def _encode_meta(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_jsonable(value), sort_keys=True)


def _jsonable(value: Any) -> Any:
    """Best-effort JSON-friendly copy (argparse values may be paths, tuples, ...)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def save_router(path: str | os.PathLike[str], logits: torch.Tensor, meta: dict[str, Any]) -> None:
    """Write ``logits [rows, 2*depth]`` and ``meta`` (needs model, sampler, nfe) as an l2c-router.

    The file also records the sublayer kinds and, for a registry model, its family, resolution
    and class count, so an import can check them (:func:`router_facts`).
    """
    from safetensors.torch import save

    name = Path(path).name
    full = {**_target_meta(meta), **meta, "format": ROUTER_FORMAT, "version": ROUTER_VERSION}
    t = _check_logits(logits, name, _meta_kinds(full, name))
    _check_meta(full, t, name)
    _check_groups(full, t, name)
    header = {str(k): _encode_meta(v) for k, v in full.items()}
    write_bytes_atomic(path, save({"logits": t}, metadata=header))


def _target_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Facts about the target that a router file should carry, derived from its model name."""
    from l2c_compile.models.registry import MODELS

    out: dict[str, Any] = {"sublayers": list(SUBLAYERS)}
    spec = MODELS.get(meta.get("model")) if isinstance(meta.get("model"), str) else None
    if spec is not None:
        side = int(spec.latent_shape[1])
        out.update(
            family=spec.family,
            resolution=side if spec.pixel_space else side * 8,
            classes=int(spec.num_classes),
        )
    return out


def check_official_kinds(kinds: tuple[str, ...] | list[str], path: str | os.PathLike[str]) -> None:
    """L2CError unless a router with these sublayer kinds can be written in an official layout.

    The official layouts record no kinds: a reader takes every file for attention and MLP per
    block, so a three-kind (PixArt) router written there would import, without a word, onto a
    two-kind model 1.5× as deep. Such a router stays in the l2c-router format, which names them.
    """
    if tuple(kinds) != SUBLAYERS:
        raise L2CError(
            f"cannot write {Path(path).name} in the official layout: it holds {len(SUBLAYERS)} sublayer kinds "
            f"per block ({', '.join(SUBLAYERS)}) and this router has {len(kinds)} ({', '.join(kinds)}); "
            "use the l2c-router file (nothing was written)"
        )


def export_official(
    path: str | os.PathLike[str], logits: torch.Tensor, family: str, kinds: tuple[str, ...] | None = None
) -> None:
    """Write ``logits`` (a router with sublayer ``kinds``) in the official layout of ``family``
    ("dit" or "uvit"); L2CError for kinds other than attention and MLP (:func:`check_official_kinds`)."""
    fam = family.lower().replace("-", "").replace("_", "")
    if fam not in OFFICIAL_FAMILIES:
        raise L2CError(
            f"unknown router family {family!r}; choose from {', '.join(OFFICIAL_FAMILIES)}"
            + suggest(fam, OFFICIAL_FAMILIES)
        )
    check_official_kinds(SUBLAYERS if kinds is None else kinds, path)
    t = _check_logits(logits, Path(path).name)
    # Separate tensors per row, like the official ModuleList state dict (no shared storage).
    probs = OrderedDict((f"{i}.prob", t[i].clone()) for i in range(t.shape[0]))
    obj: dict[str, Any] = {"routers": probs} if OFFICIAL_LAYOUTS[fam] == "dit-official" else probs
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


# ---------------------------------------------------------------------------------------------
# What a router file says about its target, checked against the target
# ---------------------------------------------------------------------------------------------

# Every fact a router file may carry; a file that lacks one leaves it unchecked.
# Checked in this order: the shape first (a wrong-size file is the plainest message).
FACTS = (
    "depth",
    "nfe",
    "sublayers",
    "family",
    "model",
    "resolution",
    "classes",
    "sampler",
    "sampler_options",
)
SUBLAYERS = DEFAULT_KINDS  # what a file that names no kinds holds, interleaved per block


def router_facts(router: RouterFile) -> dict[str, Any]:
    """The facts about its target that ``router`` carries, by name (see :data:`FACTS`).

    * every layout: ``nfe`` (its rows), ``depth`` (its width over the number of kinds) and
      ``sublayers`` (the kinds of each block, interleaved: attention and MLP unless an l2c-router
      file's metadata names more);
    * official DiT (``horseee/learning-to-cache`` ``train_router.py`` saves its ``args``):
      ``family`` dit, and from the args ``model``, ``resolution`` (``image_size``), ``classes``
      and ``sampler`` ddim — that trainer only trains DDIM routers;
    * official U-ViT (a bare ``{"{i}.prob"}`` dict): ``family`` uvit, nothing else;
    * l2c-router: what its metadata records (``model``, ``sampler``, ``sampler_options``,
      ``family``, ``resolution``, ``classes`` when present).
    """
    meta = router.meta
    facts: dict[str, Any] = {
        "nfe": router.rows,
        "depth": router.depth,
        "sublayers": list(router.kinds),
    }
    fmt = meta.get("format")
    if fmt == "dit-official":
        facts["family"] = "dit"
        args = meta.get("args")
        if isinstance(args, dict):
            facts["sampler"] = "ddim"
            for key, name in (
                ("model", "model"),
                ("image_size", "resolution"),
                ("num_classes", "classes"),
            ):
                if args.get(key) is not None:
                    facts[name] = args[key]
    elif fmt == "uvit-official":
        facts["family"] = "uvit"
    elif fmt == ROUTER_FORMAT:
        for key in ("model", "sampler", "family", "resolution", "classes"):
            if meta.get(key) is not None:
                facts[key] = meta[key]
        if isinstance(meta.get("options"), dict):
            facts["sampler_options"] = meta["options"]
    return facts


def check_router_target(
    router: RouterFile, name: str, target: dict[str, Any]
) -> dict[str, list[str]]:
    """Check every fact ``router`` carries against ``target`` (same keys as :data:`FACTS`).

    Raises :class:`L2CError` naming the first fact that differs (``name`` is the file's name).
    Returns ``{"checked": [...], "unchecked": [...]}``: a fact is unchecked when the file lacks
    it, or the target does not say (e.g. a model that is not in the registry).
    """
    facts = router_facts(router)
    checked, unchecked = [], []
    # The kinds decide how the width splits into blocks, so a kind mismatch is named first.
    kinds = _mismatch("sublayers", facts["sublayers"], target.get("sublayers", SUBLAYERS), target)
    if kinds:
        raise L2CError(f"{name}: {kinds}; this router was not made for this target")
    want = target.get("layout")
    if want is not None and not (want.is_uniform and router.layout.is_uniform) and router.layout != want:
        raise L2CError(f"{name}: router covers block groups {router.layout.to_json()} but the model has "
                       f"{want.to_json()}; this router was not made for this target")
    for fact in FACTS:
        have, want = facts.get(fact), target.get(fact)
        if have is None or want is None:
            unchecked.append(fact)
            continue
        problem = _mismatch(fact, have, want, target)
        if problem:
            raise L2CError(f"{name}: {problem}; this router was not made for this target")
        checked.append(fact)
    return {"checked": checked, "unchecked": unchecked}


def _mismatch(fact: str, have: Any, want: Any, target: dict[str, Any]) -> str | None:
    if fact == "model":
        # The official DiT args name the architecture ("DiT-XL/2"); the registry adds "-512".
        res = target.get("resolution")
        if have == want or (res is not None and f"{have}-{res}" == want):
            return None
        return f"router was trained for {have} but the model is {want}"
    if fact == "sampler_options":
        for key in sorted(set(have) & set(want)):
            if _norm(have[key]) != _norm(want[key]):
                return (
                    f"router was trained with sampler option {key}={have[key]!r} but the plan "
                    f"has {key}={want[key]!r}"
                )
        return None
    if fact == "sublayers":
        if list(have) != list(want):
            return f"router covers sublayers {list(have)} but the model has {list(want)}"
        return None
    if _norm(have) == _norm(want):
        return None
    if fact == "depth":
        k = len(target.get("sublayers") or SUBLAYERS)
        return (
            f"router has {k * have} entries per step but {target.get('model')} has {want} blocks "
            f"(needs {k * want})"
        )
    if fact == "nfe":
        return f"router has {have} steps but the sampler plan has {want} NFE"
    words = {
        "resolution": ("trained at resolution", "px but the model draws", "px"),
        "classes": ("trained for", "classes but the model has", "classes"),
        "family": ("is a", "router but the model family is", ""),
        "sampler": ("was trained for sampler", "but the plan is", ""),
    }[fact]
    return f"router {words[0]} {have} {words[1]} {want}{(' ' + words[2]) if words[2] else ''}"


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return value
