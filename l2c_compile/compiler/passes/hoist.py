"""Pass — hoist: move what the trajectory fixes out of the step graph into a once-per-call prologue.

In a static trajectory every value that does not depend on the latents is known before step 0:
timestep embeddings, every block's adaLN modulation at every step, the prompt's cross-attention
keys and values. This pass finds them *from the graph* — a node is hoistable when it depends
(transitively) on the call's timestep ``t`` or condition ``y`` and on parameters and constants,
never on the latent ``x`` or the guidance scale — and splits the step graph in two:

- the **prologue** (``gm.meta["l2c_prologue"]``, a :class:`Prologue`): a graph ``(t, y) → (h_1,
  …, h_k)`` of every hoistable node that is real work (a module call, a GEMM, an embedding, an
  elementwise op on two tensors) and what it needs. The generated sampler runs it once per call
  under ``torch.vmap`` over the trajectory's distinct timesteps, so each hoisted GEMM is one GEMM
  over (steps · rows, in) instead of one per step; values that depend on ``y`` only (PixArt's
  prompt keys and values) are computed once, unbatched.
- the **step graph**: each frontier value (a prologue value a latent-dependent node reads) becomes
  an input placeholder ``meta["l2c_hoisted"] = name``; a step call receives its slice.

Views and scalar arithmetic on a hoisted value (``chunk``, ``unsqueeze``, ``1 + scale``) stay in
the step graph, so the shapes later passes match (``fuse_reuse``'s ``(1 + scale.unsqueeze(1))``)
are unchanged; ``prune_chunks`` finds nothing left to prune (the prologue computes every row, in
one GEMM whose weights it reads once per call instead of once per step).

Pre: the traced, marked base graph (``trace`` → ``mark_sublayers``) with shape metadata
(``analysis.propagate_shapes`` at one image), inputs exactly ``x, t, y, cfg_scale``.
Post: a new GraphModule (same weights) whose extra inputs are hoisted placeholders read at least
once, and ``meta["l2c_prologue"]`` holding the prologue; or, when the hoisted tensors would hold
more than ``config.limit_bytes`` per image, the graph unchanged with ``stats["skipped"]`` saying why.
Stats: nodes moved, GEMMs moved (and how many run batched over steps), outputs, bytes per image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import fx
from torch.fx.passes.shape_prop import TensorMetadata

from l2c_compile.compiler.passes.analysis import node_macs
from l2c_compile.compiler.passes.base import PassResult, copy_graph_module, linear_call, node_scope
from l2c_compile.compiler.passes.naming import NAME_META
from l2c_compile.compiler.passes.sublayers import PATHS_META

HOIST_META = "l2c_hoisted"  # node.meta key on a step input that the prologue computes: its name
PROLOGUE_META = "l2c_prologue"  # GraphModule.meta key: the Prologue of a hoisted step graph
PER_STEP_META = "l2c_per_step"  # node.meta key in a prologue graph: its value depends on the timestep
LATENT_INPUTS = ("x", "cfg_scale")
CONDITION_INPUTS = ("t", "y")
DEFAULT_LIMIT_BYTES = 128 * 2**20  # per image: a batch of 8 holds at most 1 GiB of hoisted tensors

# Ops that only re-view, re-type or scale a value: left in the step graph next to their readers.
_VIEW_NAMES = frozenset({
    "getitem", "chunk", "unsqueeze", "squeeze", "view", "reshape", "flatten", "unflatten", "transpose",
    "permute", "expand", "contiguous", "to", "float", "type", "select", "slice", "size", "sym_size",
    "getattr", "split", "unbind", "t", "type_as",
})
_SCALAR_ARITH = frozenset({"add", "sub", "mul", "truediv", "div", "rsub", "neg"})


@dataclass(frozen=True)
class HoistConfig:
    """How many distinct timesteps the prologue batches, and the memory the hoisted tensors may take.

    ``steps``: distinct model timesteps of the trajectory (the prologue's vmapped dimension).
    ``rows_per_image``: network rows per image in the traced step (2 with batched CFG).
    ``limit_bytes``: most bytes per image the hoisted tensors may hold for one call; above it
    the pass leaves the graph as it is and says why.
    """

    steps: int
    rows_per_image: int = 2
    limit_bytes: int = DEFAULT_LIMIT_BYTES

    def __post_init__(self) -> None:
        if self.steps < 1 or self.rows_per_image < 1 or self.limit_bytes < 0:
            raise ValueError(f"invalid hoist config {self}")


@dataclass(frozen=True)
class Prologue:
    """What the prologue computes: ``gm(t, y) → outputs``; per output its name, whether it depends
    on the timestep (``per_step``: one slice per step) or on the condition only (computed once),
    and the bytes it holds per image for a whole call (``output_bytes``)."""

    gm: fx.GraphModule
    names: tuple[str, ...]
    per_step: tuple[bool, ...]
    output_bytes: tuple[int, ...]
    steps: int
    rows_per_image: int

    @property
    def bytes_per_image(self) -> int:
        """Bytes the hoisted tensors hold per image of a call (all steps)."""
        return sum(self.output_bytes)

    @property
    def macs_per_image(self) -> int:
        """Linear/Conv MACs of the prologue per image: per-step nodes count once per step."""
        total = sum(node_macs(self.gm, n) * (self.steps if n.meta.get(PER_STEP_META) else 1)
                    for n in self.gm.graph.nodes)
        return total // self.rows_per_image

    def restricted(self, used: set[str]) -> Prologue:
        """The prologue computing only the outputs in ``used`` (what some step graph still reads)."""
        keep = [i for i, name in enumerate(self.names) if name in used]
        if len(keep) == len(self.names):
            return self
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        output.args = (tuple(output.args[0][i] for i in keep),)
        self.gm.graph.eliminate_dead_code()
        self.gm.recompile()
        return Prologue(self.gm, *(tuple(v[i] for i in keep) for v in (self.names, self.per_step, self.output_bytes)),
                        self.steps, self.rows_per_image)


def _name_of(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return target.overloadpacket.__name__
    return str(getattr(target, "__name__", target))


def _is_tensor(n: fx.Node) -> bool:
    return isinstance(n.meta.get("tensor_meta"), TensorMetadata)


def _x_device(n: fx.Node) -> bool:
    """``x.device`` (what ``torch.export`` factory calls read): a fact of the call, not the latents."""
    return (n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] == "device"
            and isinstance(n.args[0], fx.Node) and n.args[0].op == "placeholder" and n.args[0].target == "x")


def _type_as_latent(n: fx.Node, kind: dict[fx.Node, str]) -> bool:
    """``v.type_as(h)`` of a condition value ``v`` and a latent ``h``: only ``h``'s dtype is read,
    and shape propagation knows it (U-ViT casts its time embedding to the activations' dtype)."""
    return (n.op == "call_method" and n.target == "type_as" and len(n.args) == 2
            and all(isinstance(a, fx.Node) for a in n.args) and kind.get(n.args[0]) == "cond"
            and kind.get(n.args[1]) == "latent" and _is_tensor(n.args[1]))


def _mutates(n: fx.Node) -> bool:
    if isinstance(n.target, torch._ops.OpOverload):
        return n.target._schema.is_mutable
    name = _name_of(n.target) if n.op != "call_module" else ""
    return name.endswith("_") and not name.endswith("__")


def _light(n: fx.Node) -> bool:
    """A view, a cast, a size, or arithmetic between a tensor and a Python number."""
    if n.op not in ("call_function", "call_method"):
        return False
    name = str(n.target) if n.op == "call_method" else _name_of(n.target)
    if name in _VIEW_NAMES:
        return True
    tensors = [a for a in n.all_input_nodes if _is_tensor(a)]
    return name.strip("_") in _SCALAR_ARITH and len(tensors) <= 1


def classify(gm: fx.GraphModule) -> dict[fx.Node, str]:
    """Each node's dependence: ``"latent"`` (on ``x``/``cfg_scale``), ``"cond"`` (on ``t``/``y``,
    parameters and constants only) or ``"fixed"`` (parameters and constants only)."""
    kind: dict[fx.Node, str] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            kind[n] = "cond" if n.target in CONDITION_INPUTS else "latent"
        elif n.op == "get_attr" or _x_device(n):
            kind[n] = "fixed"
        elif n.op == "output":
            kind[n] = "latent"
        elif _type_as_latent(n, kind):
            kind[n] = "cond"
        else:
            inputs = {kind[a] for a in n.all_input_nodes}
            if "latent" in inputs or _mutates(n):
                kind[n] = "latent"
            else:
                kind[n] = "cond" if "cond" in inputs else "fixed"
    return kind


def _prologue_nodes(gm: fx.GraphModule, kind: dict[fx.Node, str]) -> set[fx.Node]:
    """The condition nodes worth computing once: real work and everything condition-side it needs."""
    seeds = [n for n in gm.graph.nodes if kind[n] == "cond" and n.op != "placeholder" and _is_tensor(n)
             and not _light(n)]
    moved: set[fx.Node] = set()
    todo = list(seeds)
    while todo:
        n = todo.pop()
        if n in moved or n.op == "placeholder" or kind[n] != "cond":
            continue
        moved.add(n)
        todo.extend(n.all_input_nodes)
    # A tuple (``chunk``) is never an input: its items that leave the prologue are moved too.
    changed = True
    while changed:
        changed = False
        for n in list(moved):
            if _is_tensor(n) or not isinstance(n.meta.get("tensor_meta"), tuple | list):
                continue
            for u in n.users:
                if u not in moved and _is_tensor(u):
                    moved.add(u)
                    changed = True
    return moved


def _per_step(gm: fx.GraphModule, moved: set[fx.Node]) -> set[fx.Node]:
    """Moved nodes whose *values* depend on ``t`` (a size read off ``t`` does not count)."""
    t = next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "t")
    out = {t}
    for n in gm.graph.nodes:
        if n in moved and n.meta.get("tensor_meta") is not None and any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out - {t}


def _blocks(gm: fx.GraphModule) -> dict[str, int]:
    paths = gm.meta.get(PATHS_META) or {}
    return {path.rsplit(".", 1)[0]: key[1] for key, path in paths.items()}


_GENERIC_NAMES = (None, "linear", "hidden_states", "sample", "out", "x")


def _value_name(n: fx.Node, blocks: dict[str, int]) -> str:
    """A readable name: ``b3_adaLN_modulation``, ``final_layer_adaLN_modulation``, ``b0_to_k``."""
    scope = node_scope(n, "model.") or ""
    parts = [p for p in scope.split(".") if p and not p.isdigit()]
    named = n.meta.get(NAME_META)
    path = next((p for p in blocks if scope == p or scope.startswith(p + ".")), None)
    if path is not None:
        leaf = [p for p in scope.removeprefix(path).split(".") if p and not p.isdigit()]
        base = leaf[-1] if named in _GENERIC_NAMES and leaf else named or _name_of(n.target)
        name = f"b{blocks[path]}_{base}"
    elif named in _GENERIC_NAMES:
        name = "_".join(parts[-2:]) or _name_of(n.target)
    else:
        name = named
    return re.sub(r"\W", "_", name)


def _bytes(n: fx.Node) -> int:
    meta = n.meta["tensor_meta"]
    return math.prod(meta.shape) * torch.empty((), dtype=meta.dtype).element_size()


def hoist(gm: fx.GraphModule, config: HoistConfig) -> PassResult:
    """Split ``gm`` into a prologue (``meta["l2c_prologue"]``) and a step graph reading its values."""
    kind = classify(gm)
    moved = _prologue_nodes(gm, kind)
    frontier = [n for n in gm.graph.nodes if n in moved and _is_tensor(n) and any(u not in moved for u in n.users)]
    if not frontier:
        return PassResult(gm, False, {"nodes": 0, "gemms": 0, "outputs": 0, "bytes_per_image": 0})
    per_step = _per_step(gm, moved)
    steps = config.steps
    size = sum(_bytes(n) * (steps if n in per_step else 1) for n in frontier) // _images(frontier, config)
    gemms = [n for n in moved if linear_call(gm, n) is not None]
    stats = {
        "nodes": len(moved),
        "gemms": len(gemms),
        "gemms_batched_over_steps": sum(1 for n in gemms if n in per_step),
        "outputs": len(frontier),
        "outputs_per_step": sum(1 for n in frontier if n in per_step),
        "steps": steps,
        "bytes_per_image": size,
    }
    if size > config.limit_bytes:
        stats["skipped"] = (f"hoisting skipped: the hoisted tensors would hold {size / 2**20:.1f} MiB per image, "
                            f"above the limit of {config.limit_bytes / 2**20:.1f} MiB (hoist_limit_bytes)")
        return PassResult(gm, False, stats)

    blocks = _blocks(gm)
    names: dict[fx.Node, str] = {}
    for n in frontier:
        stem, i = _value_name(n, blocks), 1
        name = stem
        while name in names.values() or name in (*LATENT_INPUTS, *CONDITION_INPUTS):
            i += 1
            name = f"{stem}_{i}"
        names[n] = name

    images = _images(frontier, config)
    prologue = Prologue(_prologue_graph(gm, moved, per_step, frontier), tuple(names[n] for n in frontier),
                        tuple(n in per_step for n in frontier),
                        tuple(_bytes(n) * (steps if n in per_step else 1) // images for n in frontier),
                        steps, config.rows_per_image)

    new = copy_graph_module(gm)
    old_to_new = dict(zip(gm.graph.nodes, new.graph.nodes, strict=True))
    moved_new = {old_to_new[n] for n in moved}
    anchor = [n for n in new.graph.nodes if n.op == "placeholder"][-1]
    for n in frontier:
        value = old_to_new[n]
        with new.graph.inserting_after(anchor):
            ph = new.graph.placeholder(names[n])
        ph.meta[HOIST_META] = names[n]
        ph.meta["tensor_meta"] = n.meta["tensor_meta"]
        value.replace_all_uses_with(ph, delete_user_cb=lambda user: user not in moved_new)
        anchor = ph
    new.graph.eliminate_dead_code()
    new.graph.lint()
    new.recompile()
    new.meta.update(gm.meta)
    new.meta[PROLOGUE_META] = prologue
    stats["macs_per_image"] = prologue.macs_per_image
    return PassResult(new, True, stats)


def _images(frontier: list[fx.Node], config: HoistConfig) -> int:
    """Images in the traced example (its first dimension over the rows per image; at least 1)."""
    first = frontier[0].meta["tensor_meta"].shape
    rows = first[0] if len(first) else config.rows_per_image
    return max(1, int(rows) // config.rows_per_image)


def _prologue_graph(gm: fx.GraphModule, moved: set[fx.Node], per_step: set[fx.Node],
                    frontier: list[fx.Node]) -> fx.GraphModule:
    """``prologue(t, y) → (frontier values)``: the moved nodes and the parameters/constants they read."""
    needed: set[fx.Node] = set()
    todo = list(frontier)
    while todo:
        n = todo.pop()
        if n in needed:
            continue
        needed.add(n)
        if _x_device(n):
            continue
        latent_dtype = n.op == "call_method" and n.target == "type_as" and n.args[1] not in moved
        todo.extend(n.all_input_nodes[:1] if latent_dtype else n.all_input_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    inputs = {name: graph.placeholder(name) for name in CONDITION_INPUTS}
    for n in gm.graph.nodes:
        if n not in needed:
            continue
        if n.op == "placeholder":
            env[n] = inputs.get(n.target)
            continue
        if _x_device(n):  # the prologue has no x: the timesteps live on the same device
            env[n] = graph.call_function(getattr, (inputs["t"], "device"))
            env[n].meta.update({k: v for k, v in n.meta.items() if k != "tensor_meta"})
            continue
        if n.op == "call_method" and n.target == "type_as" and n.args[1] not in moved:  # the latent's dtype
            env[n] = graph.call_method("to", (env[n.args[0]], n.args[1].meta["tensor_meta"].dtype))
            env[n].meta.update(n.meta)
            env[n].meta[PER_STEP_META] = n in per_step
            continue
        env[n] = graph.node_copy(n, lambda a: env[a])
        env[n].meta[PER_STEP_META] = n in per_step
    graph.output(tuple(env[n] for n in frontier))
    prologue = fx.GraphModule(gm, graph, class_name="L2CPrologue")
    prologue.meta.update(gm.meta)
    return prologue
