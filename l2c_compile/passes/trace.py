"""Pass 1 — trace: one model call (guided ε, batched CFG) into a torch.fx GraphModule.

Post: placeholders ``x, t, y, cfg_scale``; a single tensor output (ε); torch.nn leaf modules
(Linear, LayerNorm, Conv2d, activations) appear as ``call_module`` nodes, everything else is
flattened into functions and methods, so the branch structure is visible.
"""

from __future__ import annotations

from torch import fx, nn

from l2c_compile.guidance import GuidedDenoiser
from l2c_compile.passes.base import CompileError


def trace_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Trace ``GuidedDenoiser(model, cfg)`` with torch.fx; raise CompileError if it cannot."""
    root = GuidedDenoiser(model, cfg=cfg)
    try:
        graph = fx.Tracer().trace(root)
    except Exception as exc:  # fx reports untraceable Python in many ways
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    for node in graph.nodes:
        node.type = None  # annotations would drag typing globals into the emitted code
    return fx.GraphModule(root, graph, class_name="L2CStep")
