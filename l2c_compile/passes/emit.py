"""Pass — emit: the specialized step graphs and the unrolled sampler loop as readable Python.

Output is one self-contained module source: a ``step_<g>(self, x, t, y, cfg_scale, *caches)``
function per distinct step graph (fx's own code generation, rooted at ``self``), ``STEPS``, and
``sample(self, noise, labels, cfg_scale)`` — every model call of the plan unrolled with its
timestep and update coefficients as literals, cache tensors held in locals from writer to last
reader and ``del``-ed right after. ``self`` is the :class:`~l2c_compile.runtime.CompiledSampler`,
which owns ``self.model`` (the weights), ``self.steps`` and ``self.model_dtype``.
"""

from __future__ import annotations

import math
import types

from torch import fx

from l2c_compile.passes.base import CompileError, SublayerKey, cache_input_name
from l2c_compile.passes.liveness import CachePlan
from l2c_compile.samplers.base import Combination, SamplerPlan

HEADER_IMPORTS = {
    "torch": "import torch",
    "inf": "from math import inf",
    "nan": "from math import nan",
    "device": "from torch import device",
    "fx_pytree": "import torch.fx._pytree as fx_pytree",
    "pytree": "import torch.utils._pytree as pytree",
    "NoneType": "NoneType = type(None)",
}


def _import_line(name: str, obj: object) -> str | None:
    if name in HEADER_IMPORTS:
        return HEADER_IMPORTS[name]
    if isinstance(obj, types.ModuleType):
        return f"import {obj.__name__} as {name}"
    module, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if module == "builtins" and qual == name:
        return None  # builtins (getattr, slice, …) need no import
    if module and qual and "<" not in qual and "." not in qual:
        return f"from {module} import {qual} as {name}"
    raise CompileError(f"emit: cannot express global {name!r} ({obj!r}) as an import")


def step_source(gm: fx.GraphModule, graph_id: int) -> tuple[str, list[str]]:
    """Source of one step function and the import lines it needs."""
    code = gm.graph.python_code(root_module="self")
    src = code.src.strip("\n")
    if not src.startswith("def forward(self"):
        raise CompileError("emit: unexpected fx code layout")
    src = f"def step_{graph_id}(self" + src[len("def forward(self"):]
    imports = [_import_line(name, obj) for name, obj in sorted(code.globals.items())]
    return src, [line for line in imports if line is not None]


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
    for s, step in enumerate(plan.steps):
        lines.append(f"    # ── solver step {s}")
        for call in step.calls:
            cc = cache.calls[call.index]
            exports = cache.exports[cc.graph]
            args = ", ".join(["x_in.to(dt)", f"torch.full((n,), {_lit(call.timestep)}, dtype=torch.float32, device=dev)",
                              "labels", "cfg_scale", *[_var(k) for k in cc.reads]])
            lines.append(f"    # call {call.index} · t={call.timestep:g} · {roles[call.index]} · graph {cc.graph}"
                         + (f" · reuses {len(cc.reads)}" if cc.reads else ""))
            lines.append(f"    x_in = {_combination(call.input)}")
            lines.append(f"    out = self.steps[{cc.graph}]({args})")
            lines.append(f"    eps_{call.index} = out[0].to(x.dtype)")
            for k in cc.keeps:
                lines.append(f"    {_var(k)} = out[{1 + exports.index(k)}]")
            drops = ["out", "x_in", *[_var(k) for k in cc.drops_after]]
            lines.append(f"    del {', '.join(drops)}")
        lines.append(f"    x = {_combination(step.update)}")
        lines.append(f"    del {', '.join(f'eps_{c.index}' for c in step.calls)}")
    lines.append("    return x")
    return "\n".join(lines)


def emit_module(graphs: list[fx.GraphModule], plan: SamplerPlan, cache: CachePlan, roles: list[str],
                title: str) -> str:
    """The whole generated module's source."""
    steps, imports = [], {"import torch"}
    for g, gm in enumerate(graphs):
        src, imps = step_source(gm, g)
        calls = cache.graph_calls(g)
        mask = cache.masks[g]
        desc = (f"# ── step graph {g}: reuses {len(mask[0])} attention + {len(mask[1])} MLP sublayers; "
                f"exports {len(cache.exports[g])} cache entries; calls {', '.join(map(str, calls))}")
        steps.append(desc + "\n" + src)
        imports.update(imps)
    if any("torch.ops.l2c." in st for st in steps):
        imports.add("import l2c_compile.kernels  # registers the fused torch.ops.l2c.* epilogues")
    reads_doc = ", ".join(cache_input_name(k) for k in cache.calls[0].reads) or "none"
    head = [
        '"""Generated by l2c-compile; `load` regenerates this file and refuses a copy that differs.',
        "",
        title,
        f"{len(graphs)} distinct step graphs; peak live cache entries {cache.peak_live_entries}; "
        f"first call reads: {reads_doc}.",
        '"""',
        "",
        *sorted(imports),
        "",
    ]
    body = "\n\n\n".join(steps)
    table = "STEPS = (" + ", ".join(f"step_{g}" for g in range(len(graphs))) + ",)"
    return "\n".join(head) + "\n\n" + body + "\n\n\n" + table + "\n\n\n" + sample_source(plan, cache, roles) + "\n"
