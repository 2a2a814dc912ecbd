"""The pass manager: run passes in order, lint and check invariants after each, name the culprit.

Invariants (written out in ``INVARIANTS.md`` beside this file) are checked after every pass; a
violation raises :class:`~l2c_compile.passes.base.CompileError` naming the pass that broke it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from l2c_compile.passes.base import CACHE_INPUT_META, SUBLAYER_META, CompileError, PassResult

Pass = Callable[[fx.GraphModule], PassResult]

HOST_SYNC_METHODS = frozenset({"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "nonzero"})
STANDARD_INPUTS = ("x", "t", "y", "cfg_scale")


@dataclass
class PassReport:
    """What one pass did, for the CLI and tests."""

    name: str
    modified: bool
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def check_invariants(gm: fx.GraphModule) -> None:
    """Raise CompileError (without a pass name) when a step graph breaks an invariant."""
    graph = gm.graph
    graph.lint()
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    names = tuple(n.target for n in placeholders[: len(STANDARD_INPUTS)])
    if names != STANDARD_INPUTS:
        raise CompileError(f"step inputs must start with {STANDARD_INPUTS}, got {names}")
    seen: set[Any] = set()
    for n in placeholders[len(STANDARD_INPUTS):]:
        key = n.meta.get(CACHE_INPUT_META)
        if key is None:
            raise CompileError(f"extra input {n.target!r} is not a cache input")
        if not n.users:
            raise CompileError(f"cache input {n.target!r} is never read")
        seen.add(key)
    for n in graph.nodes:
        if n.op == "call_method" and n.target in HOST_SYNC_METHODS:
            raise CompileError(f"node {n.name} calls .{n.target}(): a host sync inside a step graph")
        key = n.meta.get(SUBLAYER_META)
        if key is not None and n.op != "placeholder":
            if key in seen:
                raise CompileError(f"sublayer {key} is both read from the cache and computed (two writers)")
            seen.add(key)
    output = next(n for n in graph.nodes if n.op == "output")
    if isinstance(output.args[0], tuple):
        exported = output.args[0][1:]
        bad = [e for e in exported if not (isinstance(e, fx.Node) and SUBLAYER_META in e.meta)]
        if bad:
            raise CompileError(f"exported values {bad} are not sublayer outputs")


class PassManager:
    """Runs named passes; after each, lints the graph and checks the invariants."""

    def __init__(self, passes: Sequence[tuple[str, Pass]], *, check: bool = True) -> None:
        self.passes = list(passes)
        self.check = check

    def run(self, gm: fx.GraphModule) -> tuple[fx.GraphModule, list[PassReport]]:
        """Apply every pass in order; return the final module and one report per pass."""
        reports = []
        for name, fn in self.passes:
            start = time.perf_counter()
            try:
                result = fn(gm)
            except CompileError:
                raise
            except Exception as exc:
                raise CompileError(f"pass {name} failed: {exc}") from exc
            gm = result.gm
            if self.check:
                try:
                    check_invariants(gm)
                except CompileError as exc:
                    raise CompileError(f"pass {name} broke an invariant: {exc}") from exc
                except Exception as exc:  # fx lint errors
                    raise CompileError(f"pass {name} left an invalid graph: {exc}") from exc
            reports.append(PassReport(name, result.modified, time.perf_counter() - start, result.stats))
        return gm, reports
