"""The pass manager: run passes in order, lint and check invariants after each, name the culprit.

A pass is a :class:`Pass`: a name, a function ``fn(gm) -> PassResult`` or ``fn(gm, config)``, and
its typed, frozen config (``SpecializeConfig``, ``MarkConfig``; None for passes without options).
Invariants (written out in ``INVARIANTS.md`` beside this file) are checked after every pass; a
failure or violation raises :class:`~l2c_compile.compiler.passes.base.CompileError` in one line naming the
pass, the passes that ran before it and the step graph (its mask), e.g. ``pass prune_chunks broke
an invariant: … (step graph 2: reuses attention [0, 3], MLP [1]; after specialize, dce)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import fx

from l2c_compile.compiler.passes.base import (
    CACHE_INPUT_META,
    SUBLAYER_META,
    CompileError,
    PassResult,
)
from l2c_compile.compiler.passes.hoist import HOIST_META


@dataclass(frozen=True)
class Pass:
    """One named pass with its typed, frozen config (None: the pass takes none)."""

    name: str
    fn: Callable[..., PassResult]
    config: Any = None

    def __call__(self, gm: fx.GraphModule) -> PassResult:
        """Run the pass on ``gm``."""
        return self.fn(gm) if self.config is None else self.fn(gm, self.config)

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
        if HOIST_META in n.meta:
            if not n.users:
                raise CompileError(f"hoisted input {n.target!r} is never read")
            continue
        key = n.meta.get(CACHE_INPUT_META)
        if key is None:
            raise CompileError(f"extra input {n.target!r} is neither hoisted nor a cache input")
        # A cache input may go unread: a reused sublayer whose every downstream use is dead in this
        # step (SD3: a reused text MLP before a last block whose attention is reused too); the
        # loop still hands it over, as the liveness plan says.
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
    """Runs passes in order; after each, lints the graph and checks the invariants.

    ``passes``: :class:`Pass` objects (or ``(name, fn)`` pairs for passes without config).
    ``graph``: what is being compiled, for error messages (``step graph 2: reuses …``).
    """

    def __init__(
        self,
        passes: Sequence[Pass | tuple[str, Callable[[fx.GraphModule], PassResult]]],
        *,
        check: bool = True,
        graph: str = "the traced step",
    ) -> None:
        self.passes = [p if isinstance(p, Pass) else Pass(p[0], p[1]) for p in passes]
        self.check = check
        self.graph = graph

    def _where(self, done: list[str]) -> str:
        return f"({self.graph}; after {', '.join(done) if done else 'no other pass'})"

    def run(self, gm: fx.GraphModule) -> tuple[fx.GraphModule, list[PassReport]]:
        """Apply every pass in order; return the final module and one report per pass."""
        reports: list[PassReport] = []
        done: list[str] = []
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p(gm)
            except Exception as exc:  # a pass's own CompileError included: add where it happened
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise CompileError(f"pass {p.name} failed: {msg} {self._where(done)}") from exc
            gm = result.gm
            if self.check:
                try:
                    check_invariants(gm)
                except CompileError as exc:
                    raise CompileError(f"pass {p.name} broke an invariant: {exc} {self._where(done)}") from exc
                except Exception as exc:  # fx lint errors
                    msg = str(exc).splitlines()[0]
                    raise CompileError(f"pass {p.name} left an invalid graph: {msg} {self._where(done)}") from exc
            reports.append(PassReport(p.name, result.modified, time.perf_counter() - start, result.stats))
            done.append(p.name)
        return gm, reports
