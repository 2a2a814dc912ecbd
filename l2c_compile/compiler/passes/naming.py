"""Value names from the model's own source: what the emitted code calls each traced value.

fx names values after operations (``getitem_117``, ``add_5``). A person reads ``shift_msa`` and
``x``, the names the model's source gives them. For every node this module reads the innermost
frame of the model's code in ``node.meta["stack_trace"]`` (recorded by ``trace_step``; an export
capture keeps the frames of the model's own functions too, not only ``forward``) and parses the
statement that frame stands on (the whole statement, also where it spans several lines):

- the value a line assigns (``x = x + gate * attn``: the add, whose users are on other lines) is
  named after its target (``x``); in ``a, b = t.chunk(2)`` each ``getitem`` is named ``a``, ``b``;
- the value a ``return`` line returns is named after the function (``modulate``) or, for
  ``forward``, after the innermost module it was made in (``attn``, ``t_embedder``, or ``to_q``
  for a ``torch.nn.Linear`` called on such a line).

Values made in different submodules called from one statement never count as one expression.

Post: ``node.meta["l2c_name"]`` on every node that got a name; nothing else changes. Passes that
replace a node hand its name on (``prune_chunks``, ``fuse_reuse``). Names are hints: the emitter
adds block prefixes and makes them unique.
"""

from __future__ import annotations

import ast
import functools
import linecache
import operator
import re
from pathlib import Path

import torch
from torch import fx

NAME_META = "l2c_name"
STANDS_FOR_META = "l2c_stands_for"  # node.meta key: the traced node (by name) whose value a rewrite's node equals
COMMENT_META = "l2c_comment"  # node.meta key: a line the emitted code prints above the node's statement
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)')


_PASSES = str(Path(__file__).resolve().parent)  # the capture's own frames (its fx tracer) name nothing


def _user_frame(node: fx.Node) -> tuple[str, int, str, str] | None:
    """(file, line, function, source text) of the innermost frame outside torch and the compiler."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = [m.groups() for m in _FRAME.finditer(trace)]
    for file, line, func, text in reversed(frames):
        if "/torch/" not in file.replace("\\", "/") and not file.startswith(_PASSES):
            return file, int(line), func, text
    return None


@functools.lru_cache(maxsize=4096)
def _statement_of_line(text: str) -> ast.stmt | None:
    try:
        body = ast.parse(text.strip()).body
    except SyntaxError:
        return None  # one line of a multi-line statement whose file cannot be read
    return body[0] if len(body) == 1 else None


_SIMPLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Return, ast.Expr)


@functools.lru_cache(maxsize=256)
def _file_statements(file: str) -> dict[int, ast.stmt] | None:
    """Line → the innermost simple statement (assignment, return, expression) spanning it."""
    source = "".join(linecache.getlines(file))
    if not source:
        return None
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    spans: dict[int, ast.stmt] = {}
    for node in ast.walk(tree):
        if not isinstance(node, _SIMPLE) or node.end_lineno is None:
            continue
        for line in range(node.lineno, node.end_lineno + 1):
            held = spans.get(line)
            if held is None or (node.end_lineno - node.lineno) < (held.end_lineno or 0) - held.lineno:
                spans[line] = node
    return spans


def _statement(file: str, line: int, text: str) -> ast.stmt | None:
    """The statement at ``file:line`` (read from the file, so a statement over several lines is
    whole), or ``text`` parsed alone where the file cannot be read."""
    spans = _file_statements(file)
    if spans is not None and line in spans:
        return spans[line]
    return _statement_of_line(text)


def _site(node: fx.Node, frame: tuple[str, int, str, str]) -> tuple[str, int, str | None]:
    """Where a value is made: its statement (file, first line) and its innermost module, so that
    values made in different submodules called from one statement never count as one expression."""
    file, line, _, text = frame
    stmt = _statement(file, line, text)
    return file, (stmt.lineno if stmt is not None and stmt.lineno <= line else line), _scope_path(node)


def _target_names(stmt: ast.stmt) -> str | list[str | None] | None:
    """``x`` for ``x = …`` / ``x += …``; ``[a, b, None]`` for ``a, b, c.d = …``; None otherwise."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
    elif isinstance(stmt, ast.AugAssign | ast.AnnAssign):
        target = stmt.target
    else:
        return None
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Tuple):
        return [t.id if isinstance(t, ast.Name) else None for t in target.elts]
    return None


def _scope_entries(node: fx.Node) -> list[str]:
    entries = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module":
        entries = entries[:-1]  # a leaf's own entry: its caller's forward made the call
    return [str(e[0] if isinstance(e, tuple) else e) for e in entries]


def _scope_path(node: fx.Node) -> str | None:
    entries = _scope_entries(node)
    return entries[-1] if entries else None


def _scope_leaf(node: fx.Node) -> str | None:
    """The attribute name of the module whose ``forward`` made ``node``."""
    path = _scope_path(node)
    if path is None:
        return None
    leaf = path.rsplit(".", 1)[-1]
    return None if not leaf or leaf.isdigit() else leaf


def _size_name(node: fx.Node) -> str | None:
    """A name for a symbolic size (an export capture keeps the batch symbolic): ``n`` for an
    input's batch size, ``batch`` for a multiple of it (the CFG-doubled batch), ``size`` for any
    other. The statement a size was first needed on says nothing about what it is."""
    if not isinstance(node.meta.get("val"), torch.SymInt):
        return None
    if node.target is torch.ops.aten.sym_size.int and node.args[1:] == (0,) and node.args[0].op == "placeholder":
        return "n"
    if node.target is operator.mul and any(isinstance(a, fx.Node) and a.meta.get(NAME_META) == "n" for a in node.args):
        return "batch"
    return "size"


def name_values(gm: fx.GraphModule) -> int:
    """Set ``meta["l2c_name"]`` from the statement each value comes from; return how many."""
    sizes = 0
    for node in gm.graph.nodes:
        size = _size_name(node)
        if size is not None:
            node.meta[NAME_META] = size
            sizes += 1
    frames = {n: None if NAME_META in n.meta else _user_frame(n) for n in gm.graph.nodes}
    sites = {n: _site(n, f) for n, f in frames.items() if f is not None}
    roots: dict[tuple[str, int], list[fx.Node]] = {}  # the values each statement leaves, in order
    for node in gm.graph.nodes:
        site = sites.get(node)
        if site is None or node.op in ("placeholder", "output", "get_attr"):
            continue
        if not any(sites.get(u) == site for u in node.users):
            roots.setdefault(site[:2], []).append(node)
    named = 0
    for node in gm.graph.nodes:
        frame, site = frames[node], sites.get(node)
        if frame is None or site is None or node.op in ("placeholder", "output", "get_attr"):
            continue
        if any(sites.get(u) == site for u in node.users):
            continue  # part of a larger expression in this statement
        file, line, func, text = frame
        stmt = _statement(file, line, text)
        if stmt is None:
            continue
        target = _target_names(stmt)
        name: str | None = None
        if isinstance(target, str):
            name = target
        elif isinstance(target, list) and isinstance(getattr(stmt, "value", None), ast.Tuple):  # a, b = e1, e2
            line_roots = roots.get(site[:2], [])
            if len(line_roots) == len(target) and node in line_roots:
                name = target[line_roots.index(node)]
        elif isinstance(target, list) and node.op == "call_function" and node.target is operator.getitem:
            index = node.args[1]
            if isinstance(index, int) and 0 <= index < len(target):
                name = target[index]
        elif isinstance(stmt, ast.Return):
            name = func if func != "forward" else _scope_leaf(node)
        if name and name.isidentifier() and name != "_":
            node.meta[NAME_META] = name
            named += 1
    return named + sizes
