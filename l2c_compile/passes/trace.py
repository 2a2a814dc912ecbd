"""Pass 1 — trace: one model call (guided ε, batched CFG) into a torch.fx GraphModule.

Post: placeholders ``x, t, y, cfg_scale``; a single tensor output (ε); torch.nn leaf modules
(Linear, LayerNorm, Conv2d, activations) appear as ``call_module`` nodes, everything else is
flattened into functions and methods. Every node keeps its module scope
(``meta["nn_module_stack"]``) and the source line it came from (``meta["stack_trace"]``); the
module's ``meta["l2c_sublayer_paths"]`` holds the model family's declared sublayers, and values
carry the names the source gives them (``meta["l2c_name"]``, ``passes/naming.py``).
"""

from __future__ import annotations

from torch import fx, nn

from l2c_compile.guidance import GuidedDenoiser
from l2c_compile.passes.base import CompileError
from l2c_compile.passes.naming import name_values
from l2c_compile.passes.sublayers import PATHS_META, sublayer_spec


def trace_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Trace ``GuidedDenoiser(model, cfg)`` with torch.fx; raise CompileError if it cannot."""
    root = GuidedDenoiser(model, cfg=cfg)
    tracer = fx.Tracer()
    tracer.record_stack_traces = True  # source lines name the values in the emitted code
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx reports untraceable Python in many ways
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    for node in graph.nodes:
        node.type = None  # annotations would drag typing globals into the emitted code
    gm = fx.GraphModule(root, graph, class_name="L2CStep")
    gm.meta[PATHS_META] = sublayer_spec(model).paths(model)
    name_values(gm)
    return gm
