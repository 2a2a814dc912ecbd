"""Pass — no-op casts: drop a dtype cast of a tensor that already has that dtype.

Models that keep parts of their arithmetic in float32 write the casts into ``forward``: Wan's
``(x.float() + attn · gate).type_as(x)``, ``norm2(x.float()).type_as(x)``; SD3's and FLUX's
attention ``.to(dtype)``. In a float32 step every one of them returns its input unchanged (``Tensor.to``
and ``type_as`` return ``self`` when the dtype already matches), yet the step graph keeps them and
the emitted code reads ``h_2 = h.to(torch.float32)`` three times in a row. This pass removes such
casts where shape propagation says the input already has the output's dtype, so the code reads as
the arithmetic it does, and a reuse epilogue's ``stream + gate · cached`` is an add of the two again.

Only the aliasing forms go (``aten.to.dtype`` and ``aten.type_as`` on an export capture;
``.to(dtype)``, ``.float()``, ``.type_as(other)`` on an fx capture; no copy, device or memory
format argument): they return the same tensor, so the value and its aliasing are unchanged.
``aten._to_copy`` makes a new tensor and stays. A cast that carries a mark (a sublayer's output,
its residual add, a name another node stands for) stays, so every later pass sees the marks it
expects. A cast inside a module the emitted code calls whole (``m.mid_block(x)``: every node it had
in the traced step is still there and its call can be written, ``codegen.collapsible``) stays too:
it runs inside the call, unseen, and a missing one would make the printer spell the module out. In a bfloat16 step the casts are real and
are all kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from l2c_compile.compiler.passes.base import RESIDUAL_META, SUBLAYER_META, PassResult, node_scope
from l2c_compile.compiler.passes.codegen import ROOT, StepContext, collapsible
from l2c_compile.compiler.passes.naming import STANDS_FOR_META

_KEEP = (SUBLAYER_META, RESIDUAL_META, STANDS_FOR_META)


@dataclass(frozen=True)
class CastsConfig:
    """``ctx``: what the printer knows beyond the graph (the base graph's module scopes and calls),
    to tell which modules the emitted code will call whole."""

    ctx: StepContext


def _dtype(node: object) -> torch.dtype | None:
    """The dtype shape propagation (or export) recorded for ``node``'s value; None: unknown."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "dtype"):
        return meta.dtype
    val = node.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else None


def _alias_cast(n: fx.Node) -> bool:
    """``n`` is a cast that returns its input itself when the dtype matches (module docstring)."""
    if n.kwargs or not n.args:
        return False
    if n.op == "call_function":
        if n.target is torch.ops.aten.to.dtype:
            return len(n.args) == 2 and isinstance(n.args[1], torch.dtype)
        return n.target is torch.ops.aten.type_as.default and len(n.args) == 2
    if n.op == "call_method":
        return (n.target == "float" and len(n.args) == 1) or (
            n.target == "to" and len(n.args) == 2 and isinstance(n.args[1], torch.dtype)) or (
            n.target == "type_as" and len(n.args) == 2)
    return False


def drop_noop_casts(gm: fx.GraphModule, config: CastsConfig) -> PassResult:
    """Replace every unmarked aliasing cast whose input already has its dtype, outside the modules
    the emitted code calls whole, by that input; reports how many went (``casts_removed``)."""
    whole = set(collapsible(gm, config.ctx))
    removed = 0
    for n in list(gm.graph.nodes):
        if not _alias_cast(n) or any(key in n.meta for key in _KEEP):
            continue
        parts = (node_scope(n, ROOT) or "").split(".")
        if any(".".join(parts[:i]) in whole for i in range(1, len(parts) + 1)):
            continue  # the emitted code calls that module whole: the cast runs inside it, unseen
        src, out = n.args[0], _dtype(n)
        if out is None or _dtype(src) != out:
            continue
        n.replace_all_uses_with(src)
        gm.graph.erase_node(n)
        removed += 1
    if removed:
        gm.recompile()
    return PassResult(gm, bool(removed), {"casts_removed": removed})
