"""Pass 3 — specialize: bake one step mask into a copy of the marked graph.

Pre: sublayer output nodes are marked (``sublayers.mark_sublayers``).
Post (``mode="cache"``): for every reused sublayer, a placeholder ``cache_<kind>_<block>`` (meta
``l2c_cache_input``) replaces all uses of its output node, so the branch computing it is dead.
Post (``mode="drop"``): for every dropped sublayer, the residual add ``stream + [gate *] f`` is
replaced by ``stream`` itself, so the branch (and its gate) is dead and nothing is read.
With ``trunk`` (a call that reuses the whole trunk): every marked trunk output (``mark_trunk``)
becomes a placeholder ``cache_trunk_<j>``, so every block is dead.
In both modes the output becomes ``(eps, *exported)`` where ``exported`` are the computed
sublayer outputs that later calls read (in ``key_order``). Dead nodes are *not* removed here
(that is ``dce``'s job).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from l2c_compile.compiler.passes.base import (
    CACHE_INPUT_META,
    RESIDUAL_META,
    SUBLAYER_META,
    CompileError,
    Mask,
    PassResult,
    SublayerKey,
    cache_input_name,
    copy_graph_module,
    key_order,
)
from l2c_compile.compiler.passes.sublayers import residual_adds, sublayer_nodes
from l2c_compile.families.vocabulary import (
    DEFAULT_KINDS,
    MODES,
    TRUNK,
    CacheMode,
    kind_name,
    mask_keys,
)


@dataclass(frozen=True)
class SpecializeConfig:
    """One step graph: its mask, the sublayer outputs later calls read, and the cache/drop mode."""

    mask: Mask
    exported: tuple[SublayerKey, ...] = ()
    mode: CacheMode = "cache"
    kinds: tuple[str, ...] = DEFAULT_KINDS  # what the mask's sets stand for, in order
    # sublayers with several outputs: their cache slots (see ``sublayers.cache_slots``)
    slots: tuple[tuple[SublayerKey, tuple[SublayerKey, ...]], ...] = ()
    trunk: bool = False  # the step reuses the trunk output: no block runs

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CompileError(f"unknown specialize mode {self.mode!r}; expected cache or drop")

    def describe(self) -> str:
        """The mask in words, for messages: ``reuses attention [0, 3], MLP [1]``."""
        verb = "reuses" if self.mode == "cache" else "drops"
        if self.trunk:
            return "reuses the trunk output (no block runs)"
        parts = [f"{kind_name(k)} {sorted(ids)}" for k, ids in zip(self.kinds, self.mask, strict=True)]
        return f"{verb} {', '.join(parts)}"


def specialize(gm: fx.GraphModule, config: SpecializeConfig) -> PassResult:
    """Return a new GraphModule (sharing weights) with ``config.mask`` baked in and
    ``config.exported`` as outputs; a masked sublayer becomes a cache input (``mode="cache"``) or
    nothing (``"drop"``). CompileError when a key is not in the graph or both reused and exported.
    """
    mask, exported, mode = config.mask, config.exported, config.mode
    if mode not in MODES:
        raise CompileError(f"unknown specialize mode {mode!r}; expected cache or drop")
    new = copy_graph_module(gm)
    graph = new.graph
    nodes = sublayer_nodes(new)
    try:
        slots = dict(config.slots)
        skipped = [s for k in mask_keys(mask, config.kinds) for s in slots.get(k, (k,))]
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    if config.trunk:
        if skipped or mode != "cache":
            raise CompileError("a trunk-reusing step reuses no single sublayer and needs cache mode")
        skipped = sorted((k for k in nodes if k[0] == TRUNK), key=key_order)
        if not skipped:
            raise CompileError("the step reuses the trunk but no trunk output is marked (mark_trunk)")
    missing = [k for k in (*skipped, *exported) if k not in nodes]
    if missing:
        raise CompileError(f"sublayers {missing} are not in the traced graph")
    clash = set(skipped) & set(exported)
    if clash:
        raise CompileError(f"sublayers {sorted(clash)} cannot be both reused and exported")

    if mode == "cache":
        _read_from_cache(graph, nodes, skipped)
    elif skipped:
        _bypass_residuals(new, nodes, skipped)

    output = next(n for n in graph.nodes if n.op == "output")
    eps = output.args[0]
    output.args = ((eps, *[nodes[k] for k in sorted(exported, key=key_order)]),)
    graph.lint()
    new.recompile()
    stats = {"reused" if mode == "cache" else "dropped": len(skipped), "exported": len(exported)}
    return PassResult(new, True, stats)


def _read_from_cache(
    graph: fx.Graph, nodes: dict[SublayerKey, fx.Node], reused: list[SublayerKey]
) -> None:
    """Replace each reused sublayer's output by a new cache placeholder."""
    anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    for key in reused:
        with graph.inserting_after(anchor):
            ph = graph.placeholder(cache_input_name(key))
        ph.meta[CACHE_INPUT_META] = key
        if "tensor_meta" in nodes[key].meta:
            ph.meta["tensor_meta"] = nodes[key].meta["tensor_meta"]
        nodes[key].replace_all_uses_with(ph)
        nodes[key].meta.pop(SUBLAYER_META)  # its value now comes from the cache; the node is dead
        anchor = ph


def _bypass_residuals(
    gm: fx.GraphModule, nodes: dict[SublayerKey, fx.Node], dropped: list[SublayerKey]
) -> None:
    """Make every dropped sublayer's residual add return its stream input unchanged."""
    adds = residual_adds(gm)
    for key in dropped:
        if key not in adds:
            raise CompileError(f"sublayer {key} has no marked residual add")
        add = adds[key]
        operands = [a for a in add.args[:2] if isinstance(a, fx.Node)]
        stream = [a for a in operands if a is not nodes[key] and nodes[key] not in _ancestors(a)]
        if len(stream) != 1:
            raise CompileError(f"cannot tell the stream from the branch in the residual add of {key}")
        add.replace_all_uses_with(stream[0])
        add.meta.pop(RESIDUAL_META)
        nodes[key].meta.pop(SUBLAYER_META)  # nothing computes it any more; dce removes the branch


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        for inp in todo.pop().all_input_nodes:
            if inp not in seen:
                seen.add(inp)
                todo.append(inp)
    return seen
