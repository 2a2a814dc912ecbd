"""Pass — emit: the specialized step graphs and the unrolled sampler loop as readable Python.

Output is one self-contained module source: a ``step_<g>(self, x, t, y, cfg_scale, *caches)``
function per distinct step graph (written for a person by :mod:`~l2c_compile.compiler.passes.codegen`),
``STEPS``, and
``sample(self, noise, labels, cfg_scale)`` — every model call of the plan unrolled with its
timestep and update coefficients as literals, cache tensors held in locals from writer to last
reader and ``del``-ed right after. A step's cache outputs are unpacked into their names
(``eps_0, attn_3, _ = self.steps[0](…)``) and its cache inputs passed by keyword
(``cache_attn_3=attn_3``), never picked out of a tuple by index. ``self`` is the :class:`~l2c_compile.runtime.sampler.CompiledSampler`,
which owns ``self.model`` (the weights), ``self.steps`` and ``self.model_dtype``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import fx

from l2c_compile.compiler.passes.base import CompileError, Mask, SublayerKey, cache_input_name
from l2c_compile.compiler.passes.codegen import StepContext, prologue_source, step_source
from l2c_compile.compiler.passes.hoist import HOIST_META, Prologue
from l2c_compile.compiler.passes.liveness import CachePlan
from l2c_compile.families.vocabulary import DEFAULT_KINDS, Layout, kind_name
from l2c_compile.samplers.base import Combination, SamplerPlan, last_reads


def comment_text(text: str) -> str:
    """``text`` made safe for one ``#`` comment line: line breaks and other unprintable characters
    escaped, so free text from a manifest (a model's name) can never become code."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def block_notes(mask: Mask, depth: int, mode: str = "cache",
                kinds: tuple[str, ...] = DEFAULT_KINDS, layout: Layout | None = None) -> dict[int, str]:
    """What a step with ``mask`` does in each block, for the ``# block i: …`` comments
    (``layout``: which kinds each block has; default all ``kinds``)."""
    skipped = "reused" if mode == "cache" else "dropped"
    return {
        b: ", ".join(f"{kind_name(k)} {skipped if b in ids else 'computed'}"
                     for k, ids in zip(kinds, mask, strict=True)
                     if layout is None or k in layout.kinds_of(b))
        for b in range(depth)
    }


def _var(key: SublayerKey) -> str:
    return f"{key[0]}_{key[1]}"


def _lit(v: float) -> str:
    if not math.isfinite(v):
        raise CompileError(f"emit: non-finite sampler coefficient {v}")
    return repr(float(v))


def _combination(c: Combination, state: str = "x") -> str:
    terms = [state if c.x == 1.0 else f"{_lit(c.x)} * {state}"]
    terms += [f"{_lit(coef)} * eps_{j}" for j, coef in c.eps]
    return " + ".join(terms)


def hoisted_inputs(gm: fx.GraphModule) -> list[str]:
    """The names of a step graph's hoisted inputs (``passes/hoist.py``), in signature order."""
    return [n.meta[HOIST_META] for n in gm.graph.nodes if n.op == "placeholder" and HOIST_META in n.meta]


def prologue_rows(plan: SamplerPlan) -> list[float]:
    """The distinct model timesteps of ``plan`` in call order: the prologue's step dimension."""
    return list(dict.fromkeys(float(c.timestep) for c in plan.calls))


def _prologue_lines(plan: SamplerPlan, prologue: Prologue) -> list[str]:
    rows = prologue_rows(plan)
    once = [name for name, step in zip(prologue.names, prologue.per_step, strict=True) if not step]
    fills = ", ".join(f"torch.full((n,), {_lit(v)}, dtype=torch.float32, device=dev)" for v in rows)
    dims = ", ".join("0" if step else "None" for step in prologue.per_step)
    lines = [
        "    # prologue: computed once per call, before step 0 — what the trajectory fixes, for all "
        f"{len(rows)} timesteps at once",
        "    # (torch.vmap batches the step dimension into each GEMM's rows; a call reads its row"
        + (f"; {', '.join(once)}: the same for every step" if once else "") + ")",
        f"    t_steps = torch.stack([{fills}])  # ({len(rows)}, N)",
        f"    {', '.join(prologue.names)}, = torch.vmap(self.prologue, in_dims=(0, None), "
        f"out_dims=({dims},))(t_steps, labels)",
        "    del t_steps",
    ]
    return lines


def _hoisted_last_reads(plan: SamplerPlan, cache: CachePlan, hoisted: list[list[str]]) -> dict[str, int]:
    last: dict[str, int] = {}
    for call in plan.calls:
        for name in hoisted[cache.calls[call.index].graph]:
            last[name] = call.index
    return last


def sample_source(plan: SamplerPlan, cache: CachePlan, roles: list[str], prologue: Prologue | None = None,
                  hoisted: list[list[str]] | None = None) -> str:
    """The unrolled sampling loop for ``plan`` with the cache traffic of ``cache``; with a
    ``prologue``, its values computed before step 0 and ``hoisted[g]`` passed to step graph ``g``."""
    hoisted = hoisted or [[] for _ in cache.masks]
    per_step = dict(zip(prologue.names, prologue.per_step, strict=True)) if prologue is not None else {}
    rows = {v: i for i, v in enumerate(prologue_rows(plan))}
    last_hoisted = _hoisted_last_reads(plan, cache, hoisted)
    lines = [
        "def sample(self, noise, labels, cfg_scale):",
        f'    """{plan.sampler}, {plan.nfe} model calls, unrolled; returns the final latents."""',
        "    n = noise.shape[0]",
        "    dev = noise.device",
        "    dt = self.model_dtype",
        "    x = noise",
    ]
    if prologue is not None:
        lines += _prologue_lines(plan, prologue)
    last = last_reads(plan)
    for s, step in enumerate(plan.steps):
        lines.append(f"    # ── solver step {s}")
        for call in step.calls:
            cc = cache.calls[call.index]
            exports = cache.exports[cc.graph]
            state = "x" if call.input.x == 1.0 and not call.input.eps else "x_in"
            row = rows[float(call.timestep)]
            slices = [f"{h}[{row}]" if per_step[h] else h for h in hoisted[cc.graph]]
            args = ", ".join([f"{state}.to(dt)", f"torch.full((n,), {_lit(call.timestep)}, dtype=torch.float32, device=dev)",
                              "labels", "cfg_scale", *slices,
                              *[f"{cache_input_name(k)}={_var(k)}" for k in cc.reads]])
            lines.append(f"    # call {call.index} · t={call.timestep:g} · {roles[call.index]} · graph {cc.graph}"
                         + (" · reuses the trunk" if cache.reuses_trunk(cc.graph)
                            else f" · reuses {len(cc.reads)}" if cc.reads else ""))
            if state == "x_in":
                lines.append(f"    x_in = {_combination(call.input)}")
            # The step returns (ε, *its exports): each export this call keeps is bound to its cache
            # name, the others to `_` (freed at once).
            kept = [_var(k) if k in cc.keeps else "_" for k in exports]
            eps = f"eps_{call.index}"
            targets = ", ".join([eps, *kept]) + ("," if not kept else "")
            lines.append(f"    {targets} = self.steps[{cc.graph}]({args})")
            lines.append(f"    {eps} = {eps}.to(x.dtype)")
            if call.output is not None:  # what the updates read: the data prediction x0
                lines.append(f"    {eps} = {_combination(call.output, state)}")
            drops = [*(["_"] if "_" in kept else []), *(["x_in"] if state == "x_in" else []),
                     *[_var(k) for k in cc.drops_after],
                     *[h for h in hoisted[cc.graph] if last_hoisted[h] == call.index]]
            if drops:
                lines.append(f"    del {', '.join(drops)}")
        lines.append(f"    x = {_combination(step.update)}")
        done = [j for j in sorted(last) if last[j] == s]
        if done:
            lines.append(f"    del {', '.join(f'eps_{j}' for j in done)}")
    lines.append("    return x")
    return "\n".join(lines)


def emit_module(graphs: list[fx.GraphModule], plan: SamplerPlan, cache: CachePlan, roles: list[str],
                title: str, ctx: StepContext, mode: str = "cache", prologue: Prologue | None = None) -> str:
    """The whole generated module's source (``ctx``: the model and its scopes, see codegen;
    ``prologue``: what ``passes/hoist.py`` moved out of the step graphs, or None)."""
    steps, imports = [], {"import torch"}
    if prologue is not None:
        src, imps = prologue_source(prologue.gm, ctx, prologue.names)
        per = sum(prologue.per_step)
        desc = (f"# ── prologue: computed once per call, before step 0 (one step's values here; `sample` "
                f"runs it for every timestep at once):\n# {per} values per step, {len(prologue.names) - per} "
                f"for the whole call; {prologue.bytes_per_image} bytes per image")
        steps.append(desc + "\n" + src)
        imports.update(imps)
    depth = len(ctx.blocks)
    for g, gm in enumerate(graphs):
        mask = cache.masks[g]
        notes = ({b: "not run, the trunk output is reused (what runs here feeds the layers after the blocks)"
                  for b in range(depth)} if cache.reuses_trunk(g)
                 else block_notes(mask, depth, mode, cache.kinds, cache.layout))
        src, imps = step_source(gm, g, replace(ctx, notes=notes))
        calls = cache.graph_calls(g)
        verb = "reuses" if mode == "cache" else "drops"
        counts = " + ".join(f"{len(ids)} {kind_name(k)}" for k, ids in zip(cache.kinds, mask, strict=True))
        what = "reuses the trunk output, no block runs" if cache.reuses_trunk(g) else f"{verb} {counts} sublayers"
        desc = (f"# ── step graph {g}: {what}; "
                f"exports {len(cache.exports[g])} cache entries; calls {', '.join(map(str, calls))}")
        steps.append(desc + "\n" + src)
        imports.update(imps)
    reads_doc = ", ".join(cache_input_name(k) for k in cache.calls[0].reads) or "none"
    head = [
        '"""Generated by l2c-compile; `load` regenerates this file and refuses a copy that differs."""',
        "",
        f"# {comment_text(title)}",
        f"# {len(graphs)} distinct step graphs; peak live cache entries {cache.peak_live_entries}; "
        f"first call reads: {reads_doc}.",
        "",
        *sorted(imports),
        "",
    ]
    body = "\n\n\n".join(steps)
    table = "STEPS = (" + ", ".join(f"step_{g}" for g in range(len(graphs))) + ",)"
    hoisted = [hoisted_inputs(gm) for gm in graphs]
    loop = sample_source(plan, cache, roles, prologue, hoisted)
    return "\n".join(head) + "\n\n" + body + "\n\n\n" + table + "\n\n\n" + loop + "\n"
