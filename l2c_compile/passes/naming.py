"""Value names from the model's own source: what the emitted code calls each traced value.

fx names values after operations (``getitem_117``, ``add_5``). A person reads ``shift_msa`` and
``x``, the names the model's source gives them. For every node this module reads the innermost
frame of the model's code in ``node.meta["stack_trace"]`` (recorded by ``trace_step``) and parses
that one source line:

- the value a line assigns (``x = x + gate * attn``: the add, whose users are on other lines) is
  named after its target (``x``); in ``a, b = t.chunk(2)`` each ``getitem`` is named ``a``, ``b``;
- the value a ``return`` line returns is named after the function (``modulate``) or, for
  ``forward``, after the module that runs it (``attn``, ``t_embedder``).

Post: ``node.meta["l2c_name"]`` on every node that got a name; nothing else changes. Passes that
replace a node hand its name on (``prune_chunks``, ``fuse_reuse``). Names are hints: the emitter
adds block prefixes and makes them unique.
"""

from __future__ import annotations

import ast
import functools
import operator
import re

from torch import fx

NAME_META = "l2c_name"
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)')


def _user_frame(node: fx.Node) -> tuple[str, int, str, str] | None:
    """(file, line, function, source text) of the innermost frame outside torch itself."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = [m.groups() for m in _FRAME.finditer(trace)]
    for file, line, func, text in reversed(frames):
        if "/torch/" not in file.replace("\\", "/"):
            return file, int(line), func, text
    return None


@functools.lru_cache(maxsize=4096)
def _statement(text: str) -> ast.stmt | None:
    try:
        body = ast.parse(text.strip()).body
    except SyntaxError:
        return None  # one line of a multi-line statement
    return body[0] if len(body) == 1 else None


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


def _scope_leaf(node: fx.Node) -> str | None:
    """The attribute name of the module whose ``forward`` made ``node``."""
    entries = list((node.meta.get("nn_module_stack") or {}).values())
    if node.op == "call_module":
        entries = entries[:-1]  # a leaf's own entry: its caller's forward made the call
    if not entries:
        return None
    last = entries[-1]
    path = str(last[0] if isinstance(last, tuple) else last)
    leaf = path.rsplit(".", 1)[-1]
    return None if not leaf or leaf.isdigit() else leaf


def name_values(gm: fx.GraphModule) -> int:
    """Set ``meta["l2c_name"]`` from the source line each value comes from; return how many."""
    frames = {n: _user_frame(n) for n in gm.graph.nodes}
    roots: dict[tuple[str, int], list[fx.Node]] = {}  # the values each line leaves, in order
    for node in gm.graph.nodes:
        frame = frames[node]
        if frame is None or node.op in ("placeholder", "output", "get_attr"):
            continue
        if not any(frames.get(u) is not None and frames[u][:2] == frame[:2] for u in node.users):
            roots.setdefault(frame[:2], []).append(node)
    named = 0
    for node in gm.graph.nodes:
        frame = frames[node]
        if frame is None or node.op in ("placeholder", "output", "get_attr"):
            continue
        file, line, func, text = frame
        same_line = [u for u in node.users if frames.get(u) is not None and frames[u][:2] == (file, line)]
        if same_line:
            continue  # part of a larger expression on this line
        stmt = _statement(text)
        if stmt is None:
            continue
        target = _target_names(stmt)
        name: str | None = None
        if isinstance(target, str):
            name = target
        elif isinstance(target, list) and isinstance(stmt.value, ast.Tuple):  # a, b = e1, e2
            line_roots = roots.get((file, line), [])
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
    return named
