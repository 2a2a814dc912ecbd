"""The record a model family is: :class:`Family` (block groups, kinds, recipe, θ, conventions).

A family declares, once, everything the compiler, the schedules, the router files and router
training need to know about its models that the model code itself does not say:

- its *block groups*: module paths of blocks (a ``ModuleList`` stands for its children) and, per
  group, the cacheable sublayer kinds with each kind's module path relative to the block and the
  names of its cached outputs (one for an attention or an MLP; two for a joint attention that
  returns an image and a text stream, each gated and added to its own stream);
- the router training recipe and the default threshold θ (the official code's, spec §3, §4.1);
- the official router layout it reads, if any, and whose routers and θ apply to it;
- its guidance convention and the sampler conventions it expects.

Families are looked up by model class (:func:`family_of`) or by name (:func:`get_family`). Declaring
one (:func:`register_family`) adds its new kinds to the vocabulary (:mod:`l2c_compile.families.vocabulary`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from l2c_compile.errors import L2CError, suggest
from l2c_compile.families.vocabulary import (
    KindWords,
    Layout,
    SublayerKey,
    check_kinds,
    kind_rank,
    register_kind,
)

Guidance = Literal["null-class", "negative-condition", "distilled"]


class FamilyError(L2CError):
    """A family declaration is inconsistent, or a model has none."""


@dataclass(frozen=True)
class Recipe:
    """How the official code of one model family trains its router (spec §3)."""

    name: str
    distance: str  # "mean": MSE over C·H·W (DiT); "sum": sum of squares per sample (U-ViT)
    clamp: float | None  # logits clamped to [−c, c] after each step
    threshold: float  # θ used at inference, for the reported skip ratio
    lam: float  # the README's λ


@dataclass(frozen=True)
class KindDecl:
    """One cacheable sublayer of a block: its kind, module path relative to the block and the
    names of its cached outputs, in the order the module returns them.

    ``words``: how people read a kind that is not yet in the vocabulary (label, grid letter);
    ``after``: the kind it runs after inside a block (for a new kind).
    ``optional``: a block has this kind only where the module at ``path`` exists and is not None
    (SD3.5's second attention in its first blocks only; SD3's last block has no text MLP).
    ``outputs_of``: the outputs a given block caches, where blocks differ (SD3's last block is
    ``context_pre_only``: its joint attention's text output feeds nothing); default ``outputs``.
    ``projection``: for a branch of a *parallel* block whose branches are joined by
    ``proj(cat[branch, …])`` (FLUX's single-stream ``proj_out(cat[attn, mlp])``), the path of that
    linear projection under the block; ``path`` is then the branch's first module. A linear map
    splits by input columns, so the compiler caches each *projected* branch (its slice of the
    projection, the bias with the first branch) and a reused branch skips its slice as well; the
    branches are the group's kinds with that projection, in the order the ``cat`` joins them. Such a
    sublayer's path (:meth:`Family.paths`) is ``<block>.<projection>_<kind>``: no module, the scope
    the capture gives the split (``passes/trace.py``) and the reference executor caches at.

    Other caching tools' names for it (:mod:`l2c_compile.schedule.interop`): SmoothCache keys a
    sublayer by its module's attribute name, the last part of ``path`` (``attn1``, ``ff``), so
    that needs no declaration. ``invardiff``: the InvarDiff cache books that hold it, as dotted
    paths into the book file (``"msa_cache_book"``; ``"transformer_cache_book.ff"``), each a
    ``[steps][blocks of the group]`` table; the first is the one that decides, any others must
    agree with it (FLUX's joint attention is reused only when ``attn`` and ``context_attn`` both
    say so). Empty: InvarDiff has no name for it.
    """

    kind: str
    path: str
    outputs: tuple[str, ...] = ("out",)
    words: KindWords | None = None
    after: str | None = None
    invardiff: tuple[str, ...] = ()
    optional: bool = False
    outputs_of: Callable[[nn.Module], tuple[str, ...]] | None = None
    projection: str | None = None

    def present(self, block: nn.Module) -> bool:
        """Whether ``block`` has this sublayer (always, unless the kind is ``optional``)."""
        if not self.optional:
            return True
        try:
            return block.get_submodule(self.path) is not None
        except AttributeError:
            return False

    def cached_outputs(self, block: nn.Module) -> tuple[str, ...]:
        """The names of the outputs ``block``'s sublayer of this kind caches."""
        return self.outputs if self.outputs_of is None else tuple(self.outputs_of(block))

    @property
    def multi(self) -> bool:
        """Whether the sublayer caches several outputs."""
        return len(self.outputs) > 1


def projected(kind: KindDecl) -> str:
    """The path under its block of a projected branch (``proj_out_mlp``; ``KindDecl.projection``)."""
    return f"{kind.projection}_{kind.kind}"


@dataclass(frozen=True)
class BlockGroup:
    """Consecutive blocks with the same kinds: module paths (in execution order) and kinds."""

    blocks: tuple[str, ...]
    kinds: tuple[KindDecl, ...]

    def under(self, prefix: str) -> BlockGroup:
        """The same group for a module that holds the model at ``prefix``."""
        return BlockGroup(tuple(f"{prefix}.{b}" if prefix else b for b in self.blocks), self.kinds)


@dataclass(frozen=True)
class Shape:
    """How a registry family's constructor arguments state its size, for specs, size checks and
    MAC extrapolation (``models/``): which keyword holds the residual width and the latent side,
    and how ``depth`` maps to blocks.

    ``unit``: blocks in one repeating unit (U-ViT's in/out pair: 2), so a model of ``k`` units has
    ``depth = unit·k``; ``mid``: blocks outside the units (U-ViT's middle block: 1), so the model
    has ``depth // unit · unit + mid`` cacheable blocks. ``time_token``: the time embedding is a
    token of the sequence (U-ViT); ``label_token``: so is the class label, when the model has
    classes.
    """

    width: str
    side: str
    unit: int = 1
    mid: int = 0
    time_token: bool = False
    label_token: bool = False

    def blocks(self, depth: int) -> int:
        """Cacheable blocks of a model with constructor ``depth``."""
        return depth // self.unit * self.unit + self.mid

    def units(self, depth: int) -> int:
        """Repeating units of a model with constructor ``depth``."""
        return depth // self.unit

    def depth(self, units: int) -> int:
        """The constructor ``depth`` of a model with ``units`` repeating units."""
        return self.unit * units

    def extra_tokens(self, num_classes: int) -> int:
        """Tokens the blocks see besides the patches."""
        return int(self.time_token) + int(self.label_token and num_classes > 0)


@dataclass(frozen=True)
class Sampling:
    """The sampler conventions a family's models expect (its official code's or pipeline's)."""

    default_sampler: str  # "ddim" | "dpm-solver-2" | "dpm-solver++" | "flow-euler" | …
    noise_schedule: str  # "linear" | "scaled_linear" | "flow"
    time_input: str  # "discrete" | "continuous" | "sigma"
    default_cfg_scale: float  # in the family's own guidance convention


@dataclass(frozen=True)
class Family:
    """One model family, declared once (see the module docstring).

    ``classes``: model classes (or their names) with the module path their model sits at inside
    them (``""``: the class is the model; ``"transformer"`` for an adapter holding it).
    ``guidance``: ``"null-class"`` (batched CFG against a null label), ``"negative-condition"``
    (against a negative prompt) or ``"distilled"`` (the scale is a model input);
    ``guidance_rule``: the combination, in words. ``router_layout``: the official router file
    layout this family writes and reads (``"dit-official"``, ``"uvit-official"``) or None;
    ``router_family``: the family whose routers, recipe and θ apply (default: its own).
    ``diffusers_class``: the diffusers class an adapter wraps; ``conditioning``: what ``y`` is.
    ``build``: for a family outside the model registry and diffusers, how an artifact rebuilds an
    empty model from its manifest record's ``kwargs`` (``artifact.load``). ``shape``: for a family
    of the model registry, how its constructor arguments state its size. ``adapter``: for a
    diffusers family, the adapter class (``"module:Class"``) whose ``from_record(transformer,
    record)`` wraps a transformer rebuilt from a manifest record; ``latent``: for a diffusers
    family whose config does not give the latent side (``sample_size``), the ``(C, *spatial)`` its
    sampler's ``x`` has (``(C, H, W)``; a video family's ``(C, F, H, W)``), from the config and the
    sample size: ``{"height": px, "width": px, "num_frames": n}``, the entries the caller gave over
    ``default_size`` (the pipeline's defaults: FLUX 1024 px; Wan 81 frames of 480×832 px; a square
    family reads ``height`` only); ``depth_keys``: the config entries whose sum is the number of blocks.
    ``variant``: for a diffusers family whose configs of the same shapes condition differently, the
    suffix its spec's name takes from a config (FLUX.1-dev embeds the guidance scale, schnell does
    not), so a schedule made for one is refused on the other. ``pipeline_plan``: for a diffusers
    flow-matching family whose pipeline hands its scheduler σ or μ of its own, the function
    (``"module:function"``, ``(scheduler, nfe, latent_height, latent_width) → SamplerPlan``) that
    makes the plan as the pipeline does (FLUX.1: ``linspace`` σ and μ of the packed token count);
    None: the scheduler's own σ, with a dynamic shift's μ from the patch count. ``pipeline_check``:
    the function (``"module:function"``, ``(pipeline config) → None``, L2CError) that refuses a
    pipeline folder's ``model_index.json`` one compiled sampler cannot run (Wan 2.2's two experts),
    read before anything loads; the drop-in calls it on a loaded pipeline's ``config``.
    """

    name: str
    groups: tuple[BlockGroup, ...]
    classes: Mapping[str | type, str] = field(default_factory=dict)
    recipe: Recipe | None = None
    threshold: float | None = None
    router_layout: str | None = None
    router_family: str | None = None
    guidance: Guidance = "null-class"
    guidance_rule: str = "u + s·(c − u)"
    sampling: Sampling | None = None
    diffusers_class: str | None = None
    conditioning: Literal["class", "text", "none"] = "class"
    build: Callable[[Mapping[str, Any]], nn.Module] | None = None
    shape: Shape | None = None
    adapter: str | None = None
    latent: Callable[[Mapping[str, Any], Mapping[str, int]], tuple[int, ...]] | None = None
    default_size: Mapping[str, int] = field(default_factory=dict)
    depth_keys: tuple[str, ...] = ("num_layers",)
    variant: Callable[[Mapping[str, Any]], str] | None = None
    pipeline_plan: str | None = None
    pipeline_check: str | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise FamilyError(f"family {self.name!r} declares no block groups")
        for g in self.groups:
            names = [k.kind for k in g.kinds]
            if not names or len(set(names)) != len(names):
                raise FamilyError(f"family {self.name!r}: a block group needs distinct kinds, got {names}")

    # -- kinds ---------------------------------------------------------------------------------

    def declare_kinds(self) -> None:
        """Add this family's new kinds to the vocabulary and check each group's kind order."""
        for g in self.groups:
            for k in g.kinds:
                if k.words is not None:
                    register_kind(k.kind, k.words.label, k.words.letter, after=k.after)
            names = tuple(k.kind for k in g.kinds)
            try:
                check_kinds(names)
            except ValueError as exc:
                raise FamilyError(f"family {self.name!r}: {exc}") from None

    @property
    def kinds(self) -> tuple[str, ...]:
        """Every kind some group has, in vocabulary order."""
        return tuple(sorted({k.kind for g in self.groups for k in g.kinds}, key=kind_rank))

    def adapter_class(self) -> type:
        """The adapter class ``adapter`` names (``"module:Class"``), imported; FamilyError for a
        family that declares none."""
        if self.adapter is None:
            raise FamilyError(f"family {self.name!r} declares no adapter")
        module, _, name = self.adapter.partition(":")
        return getattr(importlib.import_module(module), name)

    def pipeline_plan_function(self) -> Callable[..., Any]:
        """The plan function ``pipeline_plan`` names, imported; FamilyError when it names none."""
        return _named(self.pipeline_plan, f"family {self.name!r} declares no pipeline plan")

    def check_pipeline(self, config: Mapping[str, Any]) -> None:
        """``pipeline_check`` on a pipeline's config (nothing when the family declares none)."""
        if self.pipeline_check is not None:
            _named(self.pipeline_check, "")(config)

    @property
    def own_router_family(self) -> str:
        """The family whose routers, recipe and θ apply (a diffusers DiT takes DiT's)."""
        return self.router_family or self.name

    # -- a model's sublayers -------------------------------------------------------------------

    def _block_paths(self, model: nn.Module, group: BlockGroup, prefix: str) -> list[str]:
        out: list[str] = []
        for path in group.under(prefix).blocks:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise FamilyError(
                    f"{type(model).__name__} has no module {path!r} (declared as sublayer blocks "
                    f"of family {self.name})"
                ) from None
            out += [f"{path}.{i}" for i in range(len(module))] if isinstance(module, nn.ModuleList) else [path]
        return out

    def _prefix(self, model: nn.Module) -> str:
        for cls in type(model).__mro__:
            for c, prefix in self.classes.items():
                if c is cls or c == cls.__name__ or c == f"{cls.__module__}.{cls.__qualname__}":
                    return prefix
        return ""

    def blocks(self, model: nn.Module) -> list[tuple[str, BlockGroup]]:
        """``(block path, its group)`` for every block of ``model``, in execution order."""
        prefix = self._prefix(model)
        return [(p, g) for g in self.groups for p in self._block_paths(model, g, prefix)]

    def sublayers(self, model: nn.Module) -> list[tuple[str, KindDecl]]:
        """``(block path, kind)`` for each block of ``model`` in order, of the kinds it has."""
        out = []
        for path, g in self.blocks(model):
            block = model.get_submodule(path)
            out += [(path, k) for k in g.kinds if k.present(block)]
        return out

    def _block_ids(self, model: nn.Module) -> dict[str, int]:
        return {path: i for i, (path, _) in enumerate(self.blocks(model))}

    def layout(self, model: nn.Module) -> Layout:
        """Which kinds each block of ``model`` has."""
        runs: list[tuple[int, tuple[str, ...]]] = []
        for path, g in self.blocks(model):
            block = model.get_submodule(path)
            ks = tuple(k.kind for k in g.kinds if k.present(block))
            if runs and runs[-1][1] == ks:
                runs[-1] = (runs[-1][0] + 1, ks)
            else:
                runs.append((1, ks))
        return Layout(tuple(runs))

    def paths(self, model: nn.Module) -> dict[SublayerKey, str]:
        """``{(kind, block): module path}`` for ``model``; FamilyError naming a missing path."""
        ids = self._block_ids(model)
        return {(k.kind, ids[path]): f"{path}.{k.path if k.projection is None else projected(k)}"
                for path, k in self.sublayers(model)}

    def outputs(self, model: nn.Module) -> dict[SublayerKey, tuple[str, ...]]:
        """``{(kind, block): names of its cached outputs}`` for ``model``."""
        ids = self._block_ids(model)
        return {(k.kind, ids[path]): k.cached_outputs(model.get_submodule(path)) for path, k in self.sublayers(model)}


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------

FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Declare ``family`` (replacing one of the same name); its new kinds join the vocabulary."""
    family.declare_kinds()
    FAMILIES[family.name] = family
    return family


def _named(target: str | None, missing: str) -> Any:
    """The object a ``"module:name"`` declaration names, imported; FamilyError(``missing``) for None."""
    if target is None:
        raise FamilyError(missing)
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def get_family(name: str) -> Family:
    """The family named ``name``; L2CError naming the known ones."""
    if name not in FAMILIES:
        raise L2CError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}" + suggest(str(name), tuple(FAMILIES)))
    return FAMILIES[name]


def family_of(model: nn.Module | type) -> Family:
    """The family declared for ``model``'s class (or its nearest base class that has one).

    FamilyError when no family declares it.
    """
    cls = model if isinstance(model, type) else type(model)
    for c in cls.__mro__:
        for fam in reversed(FAMILIES.values()):  # the latest declaration wins
            for declared in fam.classes:
                if declared is c or declared == c.__name__ or declared == f"{c.__module__}.{c.__qualname__}":
                    return fam
    raise FamilyError(
        f"no model family declares {cls.__name__} (declare one with l2c_compile.families.register_family)"
    )


def family_for_diffusers(cls_name: str) -> Family | None:
    """The family whose adapter wraps the diffusers class ``cls_name``, if any."""
    return next((f for f in FAMILIES.values() if f.diffusers_class == cls_name), None)


def recipes() -> dict[str, Recipe]:
    """Every family's router training recipe, by recipe name (``dit``, ``uvit``)."""
    return {f.recipe.name: f.recipe for f in FAMILIES.values() if f.recipe is not None}


def thresholds() -> dict[str, float]:
    """Every family's default θ, by family name (``dit`` 0.1, ``uvit`` 0.9)."""
    return {f.name: f.threshold for f in FAMILIES.values() if f.threshold is not None}
