"""Python source for one step graph, written for a person: named values, public APIs, module calls.

fx's own code generation prints one line per node with fx's names, private entry points
(``torch._C._nn.linear``), ``getattr(getattr(self.model.blocks, "0")…)`` chains and ``x = None``
after every last use. This printer writes instead:

- a module call ``m.blocks[3].attn(h)`` wherever a submodule runs whole (all of its traced nodes
  survived the passes; one tensor out, and in either one tensor or the arguments the capture saw
  it called with: ``m.out_blocks[0](x, skip)``) — ``m`` is the model; so a block a step computes
  in full is one line, and a cache step spells out only the blocks it changes;
- values named after the model's source (``b3_shift_msa``, ``b3_x``; ``passes/naming.py``),
  block ``i``'s values prefixed ``b{i}_``, each sublayer's output ``b{i}_attn`` / ``b{i}_mlp``;
- single-use intermediate values inlined into the expression that uses them (within one block, up
  to a readable length; not at all in a graph with an in-place op), with Python's operator
  precedence and fx's evaluation order
  (a same-precedence right operand keeps its parentheses: float addition is not associative);
- ``torch.nn.functional`` as ``F``; tuple results unpacked (``a, _, b = h.chunk(3, dim=-1)``), an
  item the source names nothing after its tuple and place (``qkv_0, qkv_1, qkv_2 = …``);
- a fused op with the line ``passes/fuse_reuse.py`` left for it above its statement
  (``# + cached attn output of block 3``);
- one ``# block i: …`` comment where a block starts, and one ``del`` there of the values that died
  in the block before (activations do not outlive their block by more than one block).

The result computes exactly what the graph computes; the equivalence tests hold it to that.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.node import _get_qualified_name

from l2c_compile.compiler.passes.base import (
    SUBLAYER_META,
    CompileError,
    SublayerKey,
    chunk_call,
    node_scope,
)
from l2c_compile.compiler.passes.naming import COMMENT_META, NAME_META, STANDS_FOR_META
from l2c_compile.families.vocabulary import TRUNK

ROOT = "model."  # where the model sits in the traced module
MODEL = "m"  # the emitted local bound to ``self.model``
INLINE_LIMIT = 100  # longest expression folded into its user
ATOM = 100
BINARY = {operator.add: ("+", 60), operator.sub: ("-", 60), operator.mul: ("*", 70),
          operator.truediv: ("/", 70), operator.floordiv: ("//", 70), operator.mod: ("%", 70),
          operator.matmul: ("@", 70), operator.pow: ("**", 90)}
UNARY = {operator.neg: ("-", 80), operator.pos: ("+", 80), operator.invert: ("~", 80)}
RESERVED = {MODEL, "self", "torch", "F", "operator", "math"}
SLICE_END = 2**63 - 1  # aten.slice's "to the end"

# How ATen ops recorded by torch.export are written for a person: each spelling calls the same
# ATen op with the same arguments (operators, methods and public functions dispatch to it).
_aten = torch.ops.aten
ATEN_SPELLING: dict[Any, tuple[str, Any]] = {
    _aten.add.Tensor: ("binary", operator.add), _aten.sub.Tensor: ("binary", operator.sub),
    _aten.mul.Tensor: ("binary", operator.mul), _aten.div.Tensor: ("binary", operator.truediv),
    _aten.linear.default: ("function", F.linear), _aten.layer_norm.default: ("function", F.layer_norm),
    _aten.silu.default: ("function", F.silu), _aten.gelu.default: ("function", F.gelu),
    _aten.scaled_dot_product_attention.default: ("function", F.scaled_dot_product_attention),
    _aten.conv2d.default: ("function", F.conv2d), _aten.embedding.default: ("function", torch.embedding),
    _aten.cat.default: ("function", torch.cat), _aten.exp.default: ("function", torch.exp),
    _aten.sin.default: ("function", torch.sin), _aten.cos.default: ("function", torch.cos),
    _aten.arange.start: ("function", torch.arange), _aten.full_like.default: ("function", torch.full_like),
    _aten.einsum.default: ("function", torch.einsum),
    _aten.conv3d.default: ("function", F.conv3d), _aten.rms_norm.default: ("function", F.rms_norm),
    _aten.empty_like.default: ("function", torch.empty_like),
    _aten.view.default: ("method", "view"), _aten.reshape.default: ("method", "reshape"),
    _aten.transpose.int: ("method", "transpose"), _aten.unsqueeze.default: ("method", "unsqueeze"),
    _aten.flatten.using_ints: ("method", "flatten"), _aten.chunk.default: ("method", "chunk"),
    _aten.to.dtype: ("method", "to"), _aten.permute.default: ("method", "permute"),
    _aten.sym_size.int: ("method", "size"), _aten.expand.default: ("method", "expand"),
    _aten.type_as.default: ("method", "type_as"), _aten.unflatten.int: ("method", "unflatten"),
    _aten.unbind.int: ("method", "unbind"), _aten.select.int: ("method", "select"),
    _aten.contiguous.default: ("method", "contiguous"), _aten.copy_.default: ("method", "copy_"),
    _aten.split_with_sizes.default: ("method", "split_with_sizes"),
    _aten.slice.Tensor: ("slice", None),
}


@dataclass(frozen=True)
class StepContext:
    """What the printer knows beyond the graph: the model, its blocks and the base graph's scopes.

    ``model``: the real model (``self.model`` at run time), to check a module's call signature.
    ``blocks``: block id → module path (``blocks.3``). ``sublayers``: key → module path.
    ``base_scopes``: module path → names of the nodes that ran in it in the unspecialized trace
    (a module "runs whole" in a step graph iff exactly those nodes are still there).
    ``notes``: block id → what this step does there (``attention reused, MLP computed``).
    ``calls``: module path → the (args, kwargs) it was called with in the trace, a ``str`` naming
    a node (``passes/trace.py``, fx captures); lets a module with several inputs be called whole.
    """

    model: nn.Module
    blocks: Mapping[int, str]
    sublayers: Mapping[SublayerKey, str]
    base_scopes: Mapping[str, frozenset[str]]
    notes: Mapping[int, str] = field(default_factory=dict)
    calls: Mapping[str, tuple[tuple[Any, ...], Mapping[str, Any]]] = field(default_factory=dict)


@dataclass
class _Expr:
    text: str
    prec: int
    refs: frozenset[str] = frozenset()


def scope_members(gm: fx.GraphModule) -> dict[str, frozenset[str]]:
    """Module path → names of the nodes that run in it (or in a submodule of it)."""
    members: dict[str, set[str]] = {}
    for n in gm.graph.nodes:
        scope = node_scope(n, ROOT)
        if not scope:
            continue
        parts = scope.split(".")
        for i in range(1, len(parts) + 1):
            members.setdefault(".".join(parts[:i]), set()).add(n.name)
    return {k: frozenset(v) for k, v in members.items()}


def module_ref(path: str) -> str:
    """``blocks.3.adaLN_modulation.1.weight`` → ``m.blocks[3].adaLN_modulation[1].weight``."""
    out = MODEL
    for part in path.removeprefix(ROOT).split("."):
        if part.isdigit():
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out = f"getattr({out}, {part!r})"
    return out


def _one_tensor_forward(module: nn.Module) -> bool:
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    # Exactly one parameter: a module with optional ones (U-ViT's ``Block(x, skip=None)``) may have
    # been called with them, and one traced input cannot say which.
    return len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)


_Call = tuple[fx.Node, tuple[Any, ...], dict[str, Any]]  # a module's output node, its call's args, kwargs


def collapsible(gm: fx.GraphModule, ctx: StepContext) -> dict[str, _Call]:
    """Module path → (output node, args, kwargs) for every outermost submodule that runs whole."""
    current = scope_members(gm)
    by_name = {n.name: n for n in gm.graph.nodes}
    stands_for = {n.meta[STANDS_FOR_META]: n for n in gm.graph.nodes if STANDS_FOR_META in n.meta}
    found: dict[str, _Call] = {}
    for path in sorted(current, key=lambda p: (p.count("."), p)):
        if any(path.startswith(done + ".") for done in found):
            continue
        names = current[path]
        if names != ctx.base_scopes.get(path):
            continue
        members = [by_name[name] for name in names]
        if len(members) == 1 and members[0].op == "call_module":
            continue  # already one module call
        inside = set(members)
        inputs = {a for n in members for a in n.all_input_nodes if a not in inside}
        outputs = [n for n in members if any(u not in inside for u in n.users)]
        if len(outputs) != 1:
            continue
        try:
            module = ctx.model.get_submodule(path)
        except AttributeError:
            continue
        call = _recorded_call(ctx.calls.get(path), {**stands_for, **by_name}, inputs)
        if call is not None:
            found[path] = (outputs[0], *call)
        elif len(inputs) == 1 and _one_tensor_forward(module):
            found[path] = (outputs[0], (next(iter(inputs)),), {})
    return found


def _recorded_call(call: tuple[tuple[Any, ...], Mapping[str, Any]] | None, by_name: Mapping[str, fx.Node],
                   inputs: set[fx.Node]) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The arguments a module was called with in the trace, as this graph's nodes (a traced node a
    rewrite replaced by an equal value: that value), when they are exactly the values its nodes
    read from outside (so the call computes what its nodes did)."""
    if call is None:
        return None
    args, kwargs = call
    if any(isinstance(v, str) and v not in by_name for v in (*args, *kwargs.values())):
        return None
    def node(v: Any) -> Any:
        return by_name[v] if isinstance(v, str) else v
    out_args, out_kwargs = tuple(node(v) for v in args), {k: node(v) for k, v in kwargs.items()}
    passed = {v for v in (*out_args, *out_kwargs.values()) if isinstance(v, fx.Node)}
    return (out_args, out_kwargs) if passed == inputs else None


class _Printer:
    def __init__(self, gm: fx.GraphModule, ctx: StepContext, named: Mapping[fx.Node, str] | None = None) -> None:
        self.gm, self.ctx = gm, ctx
        self.nodes = list(gm.graph.nodes)
        self.imports: set[str] = set()
        self.collapsed = collapsible(gm, ctx)
        self.hidden: dict[fx.Node, fx.Node] = {}  # node inside a collapsed module → its output
        for path, (out, _, _) in self.collapsed.items():
            for n in self.nodes:
                if n is not out and _inside(node_scope(n, ROOT), path):
                    self.hidden[n] = out
        self.module_of = {out: path for path, (out, _, _) in self.collapsed.items()}
        self.block_of = {n: self._block(n) for n in self.nodes}
        self.exprs: dict[fx.Node, _Expr] = {}
        self.names: dict[fx.Node, str] = {}
        self.by_name: dict[str, fx.Node] = {}
        self.taken: set[str] = set(RESERVED)
        for n, name in (named or {}).items():  # values the caller names (the prologue's outputs)
            self.names[n], self.by_name[name] = name, n
            self.taken.add(name)
        # Folding a value into a later expression moves its evaluation; only safe without mutation.
        self.pure = not any(_mutates(n) for n in self.nodes)

    # ── naming ──────────────────────────────────────────────────────────────────────────────
    def _block(self, n: fx.Node) -> int | None:
        scope = node_scope(n, ROOT)
        if scope is None and n.op == "placeholder":
            return None
        for b, path in self.ctx.blocks.items():
            if _inside(scope, path):
                return b
        return None

    def _sublayer_kind(self, n: fx.Node) -> str | None:
        key = n.meta.get(SUBLAYER_META)
        if key is not None and key[0] == TRUNK:
            key = None  # the trunk output keeps its own name (x after the last block)
        if key is None and n in self.module_of:
            key = next((k for k, p in self.ctx.sublayers.items() if p == self.module_of[n]), None)
        return None if key is None else key[0]

    def _base_name(self, n: fx.Node) -> str:
        kind = self._sublayer_kind(n)
        if kind is not None:
            return kind
        if n in self.module_of:  # a block called whole gives what its forward names its result
            whole_block = self.module_of[n] in self.ctx.blocks.values() and NAME_META in n.meta
            return n.meta[NAME_META] if whole_block else _leaf_name(self.module_of[n])
        if NAME_META in n.meta:
            return n.meta[NAME_META]
        if n.op == "call_module":
            return _leaf_name(str(n.target))
        first = n.args[0] if n.args else None
        if (n.op == "call_function" and n.target is operator.getitem and isinstance(first, fx.Node)
                and isinstance(n.args[1], int) and self._unpack_width(first) is not None):
            return f"{self._base_name(first)}_{n.args[1]}"  # an item of an unpacked tuple: ``qkv_0``
        if isinstance(first, fx.Node) and NAME_META in first.meta and n.op in ("call_method", "call_function"):
            return first.meta[NAME_META]  # ``freqs[None]``, ``time_token.unsqueeze(1)``: still freqs
        if n.op == "call_method":
            return str(n.target)
        if isinstance(n.target, torch._ops.OpOverload):  # aten.sym_size.int → sym_size
            return n.target.overloadpacket.__name__.strip("_") or "value"
        return getattr(n.target, "__name__", "value").strip("_") or "value"

    def name(self, n: fx.Node, base: str | None = None) -> str:
        if n in self.names:
            return self.names[n]
        block = self.block_of[n]
        stem = f"b{block}_{base or self._base_name(n)}" if block is not None else (base or self._base_name(n))
        name, i = stem, 1
        while name in self.taken:
            i += 1
            name = f"{stem}_{i}"
        self.taken.add(name)
        self.names[n] = name
        self.by_name[name] = n
        return name

    # ── expressions ─────────────────────────────────────────────────────────────────────────
    def ref(self, n: fx.Node) -> _Expr:
        if n in self.exprs:
            return self.exprs[n]
        return _Expr(self.names[n], ATOM, frozenset([self.names[n]]))

    def arg(self, a: Any) -> _Expr:
        """An argument as an expression (nodes, literals, containers)."""
        if isinstance(a, fx.Node):
            return self.ref(a)
        if isinstance(a, tuple | list):
            parts = [self.arg(x) for x in a]
            inner = ", ".join(p.text for p in parts)
            text = f"({inner},)" if isinstance(a, tuple) and len(a) == 1 else (
                f"({inner})" if isinstance(a, tuple) else f"[{inner}]")
            return _Expr(text, ATOM, frozenset().union(*(p.refs for p in parts)))
        if isinstance(a, slice):
            parts = [self.arg(x) for x in (a.start, a.stop, a.step)]
            return _Expr(f"slice({', '.join(p.text for p in parts)})", ATOM,
                         frozenset().union(*(p.refs for p in parts)))
        return _Expr(*_literal(a))

    def _index(self, a: Any) -> _Expr:
        if isinstance(a, slice):
            parts = [self.arg(x) if x is not None else _Expr("", ATOM) for x in (a.start, a.stop, a.step)]
            text = f"{parts[0].text}:{parts[1].text}" + (f":{parts[2].text}" if a.step is not None else "")
            return _Expr(text, ATOM, frozenset().union(*(p.refs for p in parts)))
        if isinstance(a, tuple) and a:
            parts = [self._index(x) for x in a]
            return _Expr(", ".join(p.text for p in parts), ATOM, frozenset().union(*(p.refs for p in parts)))
        return self.arg(a)

    def call_args(self, args: tuple, kwargs: dict) -> _Expr:
        parts = [self.arg(a) for a in args] + [_kw(k, self.arg(v)) for k, v in kwargs.items()]
        return _Expr(", ".join(p.text for p in parts), ATOM, frozenset().union(*(p.refs for p in parts)))

    def expr(self, n: fx.Node) -> _Expr:
        """The expression computing ``n`` from its (already named or inlined) inputs."""
        if n in self.module_of:
            path = self.module_of[n]
            _, args, kwargs = self.collapsed[path]
            a = self.call_args(args, kwargs)
            return _Expr(f"{module_ref(path)}({a.text})", ATOM, a.refs)
        if n.op == "get_attr":
            return _Expr(module_ref(str(n.target)), ATOM)
        if n.op == "call_module":
            a = self.call_args(n.args, n.kwargs)
            return _Expr(f"{module_ref(str(n.target))}({a.text})", ATOM, a.refs)
        if n.op == "call_method":
            obj = _paren(self.arg(n.args[0]), ATOM)
            a = self.call_args(n.args[1:], n.kwargs)
            return _Expr(f"{obj.text}.{n.target}({a.text})", ATOM, obj.refs | a.refs)
        if n.op != "call_function":
            raise CompileError(f"emit: unexpected node {n.op} {n.name}")
        target = n.target
        if target in ATEN_SPELLING:
            spelled = self._aten(n)
            if spelled is not None:
                return spelled
        if target in BINARY and len(n.args) == 2 and not n.kwargs:
            sym, prec = BINARY[target]
            left = _paren(self.arg(n.args[0]), prec)
            right = _paren(self.arg(n.args[1]), prec + 1)
            return _Expr(f"{left.text} {sym} {right.text}", prec, left.refs | right.refs)
        if target in UNARY and len(n.args) == 1:
            sym, prec = UNARY[target]
            inner = _paren(self.arg(n.args[0]), prec)
            return _Expr(f"{sym}{inner.text}", prec, inner.refs)
        if target is operator.getitem:
            obj = _paren(self.arg(n.args[0]), ATOM)
            idx = self._index(n.args[1])
            return _Expr(f"{obj.text}[{idx.text}]", ATOM, obj.refs | idx.refs)
        if target is getattr and len(n.args) == 2 and isinstance(n.args[1], str) and n.args[1].isidentifier():
            obj = _paren(self.arg(n.args[0]), ATOM)
            return _Expr(f"{obj.text}.{n.args[1]}", ATOM, obj.refs)
        a = self.call_args(n.args, n.kwargs)
        return _Expr(f"{self.function(target)}({a.text})", ATOM, a.refs)

    def _aten(self, n: fx.Node) -> _Expr | None:
        """An ATen op in its public spelling (``ATEN_SPELLING``); None to keep ``torch.ops.aten``."""
        kind, what = ATEN_SPELLING[n.target]
        kwargs = {k: v for k, v in n.kwargs.items() if not (k == "pin_memory" and v is False)}
        if kind == "binary":
            if len(n.args) != 2 or kwargs:
                return None
            sym, prec = BINARY[what]
            left = _paren(self.arg(n.args[0]), prec)
            right = _paren(self.arg(n.args[1]), prec + 1)
            return _Expr(f"{left.text} {sym} {right.text}", prec, left.refs | right.refs)
        if kind == "function":
            # aten.layer_norm's sixth argument, cudnn_enable, is deprecated and unused by ATen, and
            # F.layer_norm has none (diffusers' FP32LayerNorm records it as False)
            args = n.args[:5] if n.target is _aten.layer_norm.default else n.args
            a = self.call_args(args, kwargs)
            return _Expr(f"{self.function(what)}({a.text})", ATOM, a.refs)
        obj = _paren(self.arg(n.args[0]), ATOM)
        if kind == "method":
            a = self.call_args(n.args[1:], kwargs)
            return _Expr(f"{obj.text}.{what}({a.text})", ATOM, obj.refs | a.refs)
        dim, start, end, step = (list(n.args[1:]) + [0, None, None, 1][len(n.args) - 1:])[:4]
        bounds_ok = all(isinstance(v, int | fx.Node | None) for v in (start, end, step))
        if kwargs or not isinstance(dim, int) or dim < 0 or not bounds_ok:
            return None
        end = None if isinstance(end, int) and end == SLICE_END else end
        start = None if isinstance(start, int) and start == 0 else start
        index = (slice(None),) * dim + (slice(start, end, None if isinstance(step, int) and step == 1 else step),)
        idx = self._index(index)
        return _Expr(f"{obj.text}[{idx.text}]", ATOM, obj.refs | idx.refs)

    def function(self, target: Any) -> str:
        """How the emitted code names a called function; records the import it needs."""
        if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
            qual = _get_qualified_name(target)
            if qual.startswith("torch.ops.l2c."):
                self.imports.add("import l2c_compile.kernels  # registers the fused torch.ops.l2c.* epilogues")
            self.imports.add("import torch")
            return qual
        qual = _get_qualified_name(target)
        module, _, name = qual.rpartition(".")
        if module in ("torch._C._nn", "torch.nn.functional") and getattr(F, name, None) is not None:
            self.imports.add("import torch.nn.functional as F")
            return f"F.{name}"
        if module == "torch.functional" and getattr(torch, name, None) is target:
            module, qual = "torch", f"torch.{name}"
        if module == "torch" or (module.startswith("torch.") and "._" not in module and not name.startswith("_")):
            self.imports.add("import torch")
            return qual
        if module in ("builtins", ""):
            return name
        if module in ("operator", "math"):
            self.imports.add(f"import {module}")
            return qual
        raise CompileError(f"emit: cannot name function {qual!r} in generated code")

    # ── statements ──────────────────────────────────────────────────────────────────────────
    def _unpack_width(self, n: fx.Node) -> int | None:
        """Tuple length when every user of ``n`` takes an item by a constant index."""
        users = list(n.users)
        if not users or not all(u.op == "call_function" and u.target is operator.getitem
                                and isinstance(u.args[1], int) for u in users):
            return None
        chunk = chunk_call(n)
        if chunk is not None:
            return chunk[1]
        if isinstance(n.target, torch._ops.OpOverload):
            returns = n.target._schema.returns
            if any(isinstance(r.type, torch.ListType) for r in returns):
                return None  # a list of unknown length (aten.split, aten.unbind)
            return len(returns)
        return None

    def _inlined(self, n: fx.Node, e: _Expr) -> bool:
        """Whether ``n`` is written into its only user's expression instead of a statement."""
        if n in self.names or not self.pure or self._sublayer_kind(n) is not None or len(e.text) > INLINE_LIMIT:
            return False
        items = {self.hidden.get(u, u) for u in n.users}
        if len(items) != 1:
            return False
        item = next(iter(items))
        if item in self.module_of:
            _, args, kwargs = self.collapsed[self.module_of[item]]
            uses = _flat(args, kwargs).count(n)
        else:
            uses = _flat(item.args, item.kwargs).count(n)
        if uses != 1:
            return False
        if item.op == "output":
            return len(e.text) < 30
        return self.block_of[item] == self.block_of[n]

    def source(self, function: str) -> str:
        params = [n for n in self.nodes if n.op == "placeholder"]
        for p in params:  # the input's own name (fx's node name may be snake-cased)
            self.taken.add(str(p.target))
            self.names[p] = str(p.target)
        body: list[tuple[int | None, str, frozenset[str], frozenset[str]]] = []  # block, line, defs, refs
        unpacked: set[fx.Node] = set()
        for n in self.nodes:
            if n.op in ("placeholder", "output") or n in self.hidden or n in unpacked:
                continue
            e = self.expr(n)
            # what a fused op does that its arguments cannot say: printed above its statement
            text = "".join(c for c in str(n.meta.get(COMMENT_META, "")) if c.isprintable())  # one line, always
            note = [(self.block_of[n], f"# {text}", frozenset(), frozenset())] if text else []
            width = self._unpack_width(n)
            if width is not None and width <= 8:
                targets = ["_"] * width
                for u in n.users:
                    targets[u.args[1]] = self.name(u)
                    unpacked.add(u)
                defs = frozenset(t for t in targets if t != "_")
                body += note
                body.append((self.block_of[n], f"{', '.join(targets)} = {e.text}", defs, e.refs))
                continue
            if n.op == "get_attr" or self._inlined(n, e):
                self.exprs[n] = e
                continue
            name = self.name(n)
            body += note
            body.append((self.block_of[n], f"{name} = {e.text}", frozenset([name]), e.refs))
        output = next(n for n in self.nodes if n.op == "output")
        ret = self.arg(output.args[0])
        text = ret.text[1:-1] if ret.text.startswith("(") and isinstance(output.args[0], tuple) else ret.text
        body.append((None, f"return {text}", frozenset(), ret.refs))
        return self._assemble(function, params, body)

    def _large(self, name: str) -> bool:
        """Whether a value is worth freeing early: a token-level activation (or of unknown shape).

        Per-sample vectors (adaLN chunks, embeddings) are small and die with the function.
        """
        node = self.by_name.get(name)
        for _ in range(4):  # nodes a pass made have no shape: linear/chunk/getitem keep their input's rank
            if node is None:
                return True
            shape = getattr(node.meta.get("tensor_meta"), "shape", None)
            if shape is not None:
                return len(shape) >= 3
            node = next((a for a in node.args if isinstance(a, fx.Node)), None)
        return True

    def _assemble(self, function: str, params: list[fx.Node], body: list) -> str:
        last_use: dict[str, int] = {}
        for i, (_, _, _, refs) in enumerate(body):
            for r in refs:
                last_use[r] = i
        defined: list[str] = []
        deleted: set[str] = set()
        lines = [f"def {function}(self, {', '.join(str(p.target) for p in params)}):", f"    {MODEL} = self.model"]
        section: object = "start"
        seen_block = False
        for i, (block, line, defs, _) in enumerate(body):
            here = block if not line.startswith("return ") else section
            if here != section:
                dead = [d for d in defined if d not in deleted and last_use.get(d, -1) < i and self._large(d)]
                if dead:
                    lines.append(f"    del {', '.join(dead)}")
                    deleted.update(dead)
                if block is not None:
                    note = self.ctx.notes.get(block, "")
                    lines.append(f"    # block {block}" + (f": {note}" if note else ""))
                    seen_block = True
                elif seen_block:
                    lines.append("    # final layer and guidance")
                section = here
            lines.append(f"    {line}")
            defined += sorted(defs)
        return "\n".join(lines)


def _inside(scope: str | None, path: str) -> bool:
    return scope is not None and (scope == path or scope.startswith(path + "."))


def _mutates(n: fx.Node) -> bool:
    """An in-place op (``x.add_(…)``, ``torch.relu_``, ``aten.copy_``)."""
    if n.op == "call_method":
        name = str(n.target)
    elif n.op == "call_function":
        name = getattr(n.target, "__name__", "")
        if isinstance(n.target, torch._ops.OpOverload):
            return n.target._schema.is_mutable
    else:
        return False
    return name.endswith("_") and not name.endswith("__")


def _leaf_name(path: str) -> str:
    parts = path.removeprefix(ROOT).split(".")
    last = parts[-1]
    if last.isdigit() and len(parts) > 1:
        return f"{parts[-2]}_{last}"
    return last


def _flat(args: Any, kwargs: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((args, kwargs), out.append)
    return out


def _kw(key: str, value: _Expr) -> _Expr:
    return _Expr(f"{key}={value.text}", ATOM, value.refs)


def _paren(e: _Expr, prec: int) -> _Expr:
    return e if e.prec >= prec else _Expr(f"({e.text})", ATOM, e.refs)


def _literal(v: Any) -> tuple[str, int]:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return repr(v), ATOM
    if isinstance(v, int):
        return repr(v), ATOM if v >= 0 else 80
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return f"float({str(v)!r})", ATOM
        return repr(v), ATOM if v >= 0 else 80
    if isinstance(v, torch.dtype | torch.memory_format | torch.layout):
        return str(v), ATOM
    if isinstance(v, torch.device):
        return f"torch.device({str(v)!r})", ATOM
    if v is Ellipsis:
        return "...", ATOM
    raise CompileError(f"emit: cannot write the constant {v!r} in generated code")


def step_source(gm: fx.GraphModule, graph_id: int, ctx: StepContext) -> tuple[str, set[str]]:
    """Source of ``step_<graph_id>(self, x, t, y, cfg_scale, *caches)`` and the imports it needs."""
    printer = _Printer(gm, ctx)
    src = printer.source(f"step_{graph_id}")
    return src, printer.imports


def prologue_source(gm: fx.GraphModule, ctx: StepContext, names: tuple[str, ...]) -> tuple[str, set[str]]:
    """Source of ``prologue(self, t, y)`` (``passes/hoist.py``: one step's hoisted values, returned
    under ``names``; the sampler runs it under ``torch.vmap`` over the steps) and its imports."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    printer = _Printer(gm, ctx, dict(zip(output.args[0], names, strict=True)))
    return printer.source("prologue"), printer.imports
