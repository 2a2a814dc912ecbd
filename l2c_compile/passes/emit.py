"""Pass — emit: the specialized step graphs and the unrolled sampler loop as readable Python.

Output is one self-contained module source: a ``step_<g>(self, x, t, y, cfg_scale, *caches)``
function per distinct step graph (written for a person by :mod:`~l2c_compile.passes.codegen`),
``STEPS``, and
``sample(self, noise, labels, cfg_scale)`` — every model call of the plan unrolled with its
timestep and update coefficients as literals, cache tensors held in locals from writer to last
reader and ``del``-ed right after. ``self`` is the :class:`~l2c_compile.runtime.CompiledSampler`,
which owns ``self.model`` (the weights), ``self.steps`` and ``self.model_dtype``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import fx

from l2c_compile.masks import DEFAULT_KINDS, KIND_NAMES
from l2c_compile.passes.base import CompileError, Mask, SublayerKey, cache_input_name
from l2c_compile.passes.codegen import StepContext, step_source
from l2c_compile.passes.liveness import CachePlan
from l2c_compile.samplers.base import Combination, SamplerPlan, last_reads


def comment_text(text: str) -> str:
    """``text`` made safe for one ``#`` comment line: line breaks and other unprintable characters
    escaped, so free text from a manifest (a model's name) can never become code."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def block_notes(mask: Mask, depth: int, mode: str = "cache",
                kinds: tuple[str, ...] = DEFAULT_KINDS) -> dict[int, str]:
    """What a step with ``mask`` does in each block, for the ``# block i: …`` comments."""
    skipped = "reused" if mode == "cache" else "dropped"
    return {
        b: ", ".join(f"{KIND_NAMES[k]} {skipped if b in ids else 'computed'}"
                     for k, ids in zip(kinds, mask, strict=True))
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


def sample_source(plan: SamplerPlan, cache: CachePlan, roles: list[str]) -> str:
    """The unrolled sampling loop for ``plan`` with the cache traffic of ``cache``."""
    lines = [
        "def sample(self, noise, labels, cfg_scale):",
        f'    """{plan.sampler}, {plan.nfe} model calls, unrolled; returns the final latents."""',
        "    n = noise.shape[0]",
        "    dev = noise.device",
        "    dt = self.model_dtype",
        "    x = noise",
    ]
    last = last_reads(plan)
    for s, step in enumerate(plan.steps):
        lines.append(f"    # ── solver step {s}")
        for call in step.calls:
            cc = cache.calls[call.index]
            exports = cache.exports[cc.graph]
            state = "x" if call.input.x == 1.0 and not call.input.eps else "x_in"
            args = ", ".join([f"{state}.to(dt)", f"torch.full((n,), {_lit(call.timestep)}, dtype=torch.float32, device=dev)",
                              "labels", "cfg_scale", *[_var(k) for k in cc.reads]])
            lines.append(f"    # call {call.index} · t={call.timestep:g} · {roles[call.index]} · graph {cc.graph}"
                         + (f" · reuses {len(cc.reads)}" if cc.reads else ""))
            if state == "x_in":
                lines.append(f"    x_in = {_combination(call.input)}")
            lines.append(f"    out = self.steps[{cc.graph}]({args})")
            lines.append(f"    eps_{call.index} = out[0].to(x.dtype)")
            if call.output is not None:  # what the updates read: the data prediction x0
                lines.append(f"    eps_{call.index} = {_combination(call.output, state)}")
            if cc.keeps:
                kept = ", ".join(_var(k) for k in cc.keeps)
                items = ", ".join(f"out[{1 + exports.index(k)}]" for k in cc.keeps)
                lines.append(f"    {kept} = {items}")
            drops = ["out", *(["x_in"] if state == "x_in" else []), *[_var(k) for k in cc.drops_after]]
            lines.append(f"    del {', '.join(drops)}")
        lines.append(f"    x = {_combination(step.update)}")
        done = [j for j in sorted(last) if last[j] == s]
        if done:
            lines.append(f"    del {', '.join(f'eps_{j}' for j in done)}")
    lines.append("    return x")
    return "\n".join(lines)


def emit_module(graphs: list[fx.GraphModule], plan: SamplerPlan, cache: CachePlan, roles: list[str],
                title: str, ctx: StepContext, mode: str = "cache") -> str:
    """The whole generated module's source (``ctx``: the model and its scopes, see codegen)."""
    steps, imports = [], {"import torch"}
    depth = len(ctx.blocks)
    for g, gm in enumerate(graphs):
        mask = cache.masks[g]
        src, imps = step_source(gm, g, replace(ctx, notes=block_notes(mask, depth, mode, cache.kinds)))
        calls = cache.graph_calls(g)
        verb = "reuses" if mode == "cache" else "drops"
        counts = " + ".join(f"{len(ids)} {KIND_NAMES[k]}" for k, ids in zip(cache.kinds, mask, strict=True))
        desc = (f"# ── step graph {g}: {verb} {counts} sublayers; "
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
    return "\n".join(head) + "\n\n" + body + "\n\n\n" + table + "\n\n\n" + sample_source(plan, cache, roles) + "\n"
