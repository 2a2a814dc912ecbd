"""Pass 1 — trace: one model call (guided ε, batched CFG) into a torch.fx GraphModule.

Two captures, one result. ``torch.fx`` symbolic tracing (our own models) records torch-level calls;
``torch.export`` (models fx cannot trace, e.g. diffusers' ``DiTTransformer2DModel``, whose forward
branches on values) records ATen ops with a dynamic batch size. A model names the capture it needs
in ``l2c_capture`` (``"fx"`` or ``"export"``); without it, fx is tried first and export second.

Post (either capture): placeholders ``x, t, y, cfg_scale``; a single tensor output (ε); parameters
read by ``get_attr`` at their module paths under ``model.``; every node keeps its module scope
(``meta["nn_module_stack"]``) and the source line it came from (``meta["stack_trace"]``); the
module's ``meta["l2c_sublayer_paths"]`` holds the model family's declared sublayers, and values
carry the names the source gives them (``meta["l2c_name"]``, ``passes/naming.py``). An exported
graph additionally has no export guard call, no ``_assert_tensor_metadata`` checks and no
eval-mode dropout (each an identity or a check on values the step never changes), factory calls
take their device from ``x`` rather than the capture's, and
``gm.meta["l2c_capture"]`` says which capture made it.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from l2c_compile.families import family_of
from l2c_compile.guidance import GuidedDenoiser, example_condition
from l2c_compile.passes.base import CompileError
from l2c_compile.passes.naming import name_values
from l2c_compile.passes.sublayers import OUTPUTS_META, PATHS_META, sublayer_paths

CAPTURES = ("fx", "export")
CAPTURE_META = "l2c_capture"  # GraphModule.meta key: "fx" | "export"
EXPORT_BATCH = 2  # example batch of an export capture; the batch dimension stays symbolic


def trace_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Capture ``GuidedDenoiser(model, cfg)`` the way ``model`` needs (see the module docstring).

    Raises CompileError naming the model and why neither capture worked.
    """
    capture = getattr(model, "l2c_capture", None)
    if capture not in (None, *CAPTURES):
        raise CompileError(f"{type(model).__name__}.l2c_capture is {capture!r}; expected fx or export")
    if capture == "export":
        return export_step(model, cfg=cfg)
    try:
        return fx_step(model, cfg=cfg)
    except CompileError as fx_error:
        if capture == "fx":
            raise
        try:
            return export_step(model, cfg=cfg)
        except CompileError as export_error:
            raise CompileError(f"{fx_error}; {export_error}") from export_error


def environment_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a broken import rather than a model a capture cannot handle.

    A failed import, or a module missing one of its own attributes (the trace of an import that
    Ctrl-C cut short: ``module 'torch._dynamo' has no attribute 'guards'``), says nothing about
    the model, so it must not become "cannot trace …" nor send the compiler to the other capture.
    """
    import types

    if isinstance(exc, ImportError):
        return True
    return isinstance(exc, AttributeError) and isinstance(getattr(exc, "obj", None), types.ModuleType)


def fx_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Trace ``GuidedDenoiser(model, cfg)`` with torch.fx; raise CompileError if it cannot."""
    root = GuidedDenoiser(model, cfg=cfg)
    tracer = fx.Tracer()
    tracer.record_stack_traces = True  # source lines name the values in the emitted code
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx reports untraceable Python in many ways
        if environment_error(exc):
            raise
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx: {_first_line(exc)}") from exc
    for node in graph.nodes:
        node.type = None  # annotations would drag typing globals into the emitted code
    return _finish(fx.GraphModule(root, graph, class_name="L2CStep"), model, "fx")


def export_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Capture ``GuidedDenoiser(model, cfg)`` with ``torch.export`` (batch size symbolic).

    The model needs ``in_channels`` and ``input_size`` (the latent's channels and side) for the
    example inputs. Raises CompileError with export's first line when it cannot capture.
    """
    root = GuidedDenoiser(model, cfg=cfg, slice_halves=True)
    p = next(model.parameters())
    n, c, s = EXPORT_BATCH, model.in_channels, model.input_size
    example = (torch.zeros(n, c, s, s, dtype=p.dtype, device=p.device),
               torch.zeros(n, dtype=torch.float32, device=p.device),
               example_condition(model, n, cfg, p.device),
               torch.ones((), dtype=torch.float32, device=p.device))
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, None)
    try:
        with torch.no_grad():
            exported = torch.export.export(root, example, dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # export reports failures in many types
        if environment_error(exc):
            raise
        raise CompileError(f"cannot capture {type(model).__name__} with torch.export: {_first_line(exc)}") from exc
    unlifted = exported.module()
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in unlifted.graph.nodes:
        if _export_only(node):
            continue
        if _identity(node):
            env[node] = env[node.args[0]]
            continue
        new = graph.node_copy(node, lambda a: env[a])
        if node.op == "output":  # export returns a pytree; the step returns the tensor itself
            out = node.args[0]
            new.args = (env[out[0]] if isinstance(out, list | tuple) else env[out],)
        env[node] = new
    for node in graph.nodes:
        node.type = None
    _device_from_input(graph)
    gm = fx.GraphModule(root, graph, class_name="L2CStep")
    graph.eliminate_dead_code()
    gm.recompile()
    return _finish(gm, model, "export")


def _export_only(node: fx.Node) -> bool:
    """Nodes that exist only for export's own checks (the guard call, tensor metadata asserts)."""
    if node.op == "call_module" and str(node.target).startswith("_guards"):
        return True
    return node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default


def _identity(node: fx.Node) -> bool:
    """An eval-mode dropout (``aten.dropout(x, p, train=False)``): returns its input unchanged."""
    if node.op != "call_function" or node.target is not torch.ops.aten.dropout.default:
        return False
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
    return train is False


def _device_from_input(graph: fx.Graph) -> None:
    """Export writes the capture's device into factory calls (``arange(…, device='cpu')``); read it
    from the input instead (``x.device``), so the step runs wherever its input lives."""
    x = next(n for n in graph.nodes if n.op == "placeholder")
    device = None
    for node in list(graph.nodes):
        if not isinstance(node.kwargs.get("device"), torch.device):
            continue
        if device is None:
            with graph.inserting_after(x):
                device = graph.call_function(getattr, (x, "device"))
            device.meta["l2c_name"] = "device"
        node.kwargs = {**node.kwargs, "device": device}


def _finish(gm: fx.GraphModule, model: nn.Module, capture: str) -> fx.GraphModule:
    gm.meta[PATHS_META] = sublayer_paths(model)
    gm.meta[OUTPUTS_META] = family_of(model).outputs(model)
    gm.meta[CAPTURE_META] = capture
    name_values(gm)
    return gm


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
