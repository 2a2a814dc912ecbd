"""Pass 1 — trace: one model call (guided ε, batched CFG) into a torch.fx GraphModule.

Two captures, one result. ``torch.fx`` symbolic tracing (our own models) records torch-level calls;
``torch.export`` (models fx cannot trace, e.g. diffusers' ``DiTTransformer2DModel``, whose forward
branches on values) records ATen ops with a dynamic batch size. A model names the capture it needs
in ``l2c_capture`` (``"fx"`` or ``"export"``); without it, fx is tried first and export second.

Post (either capture): placeholders ``x, t, y, cfg_scale``; a single tensor output (ε); parameters
read by ``get_attr`` at their module paths under ``model.``; every node keeps its module scope
(``meta["nn_module_stack"]``) and the source line it came from (``meta["stack_trace"]``); the
module's ``meta["l2c_sublayer_paths"]`` holds the model family's declared sublayers, and values
carry the names the source gives them (``meta["l2c_name"]``, ``passes/naming.py``; an export
records the frames of the model's own functions for it, not only its ``forward``s). An fx capture
records the arguments each submodule was called with (``gm.meta["l2c_module_calls"]``), so the
printer can call a block that runs whole as itself. An exported
graph additionally has no export guard call, no ``_assert_tensor_metadata`` checks, no
eval-mode dropout and no ``x / 1.0``, ``x * 1`` or ``x - 0`` on a floating tensor (each an identity
or a check on values the step never changes), factory calls
take their device from ``x`` rather than the capture's, and
``gm.meta["l2c_capture"]`` says which capture made it.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

import torch
from torch import fx, nn

from l2c_compile.compiler.guidance import GuidedDenoiser, example_condition
from l2c_compile.compiler.passes.base import CompileError
from l2c_compile.compiler.passes.naming import name_values
from l2c_compile.compiler.passes.projections import split_projections
from l2c_compile.compiler.passes.sublayers import OUTPUTS_META, PATHS_META, sublayer_paths
from l2c_compile.families import family_of, latent_shape, model_dtype

CAPTURES = ("fx", "export")
CAPTURE_META = "l2c_capture"  # GraphModule.meta key: "fx" | "export"
CALLS_META = "l2c_module_calls"  # GraphModule.meta key (fx capture): module path → its call's arguments
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
    tracer = _CallRecorder()
    tracer.record_stack_traces = True  # source lines name the values in the emitted code
    try:
        graph = tracer.trace(root)
    except Exception as exc:  # fx reports untraceable Python in many ways
        if environment_error(exc):
            raise
        raise CompileError(f"cannot trace {type(model).__name__} with torch.fx: {_first_line(exc)}") from exc
    for node in graph.nodes:
        node.type = None  # annotations would drag typing globals into the emitted code
    gm = fx.GraphModule(root, graph, class_name="L2CStep")
    gm.meta[CALLS_META] = tracer.calls()
    return _finish(gm, model, "fx")


_CallArg = str | int | float | bool | None  # a node's name (a str is always one), or a constant


class _CallRecorder(fx.Tracer):
    """An fx tracer that also records, for each submodule called exactly once, the arguments it was
    called with (nodes by name, constants as they are): the printer calls a module that runs whole
    in a step graph with them (``m.blocks[3](x, c)``), whichever order its ``forward`` reads them in."""

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[str, tuple[tuple[_CallArg, ...], dict[str, _CallArg]] | None] = {}

    def call_module(self, m, forward, args, kwargs):
        try:
            path = self.path_of_module(m)
        except NameError:
            path = None
        if path is not None:
            recorded = _recordable(args), {k: _recordable((v,)) for k, v in kwargs.items()}
            ok = recorded[0] is not None and all(v is not None for v in recorded[1].values())
            first = path not in self._calls
            self._calls[path] = (recorded[0], {k: v[0] for k, v in recorded[1].items()}) if ok and first else None
        return super().call_module(m, forward, args, kwargs)

    def calls(self) -> dict[str, tuple[tuple[_CallArg, ...], dict[str, _CallArg]]]:
        """Module path under the model (``blocks.3``) → (args, kwargs) of its one call."""
        return {p.removeprefix("model."): c for p, c in self._calls.items()
                if c is not None and p.startswith("model.")}


def _recordable(values: tuple) -> tuple[_CallArg, ...] | None:
    out: list[_CallArg] = []
    for v in values:
        if isinstance(v, fx.Proxy):
            out.append(v.node.name)
        elif v is None or isinstance(v, bool | int | float):
            out.append(v)
        else:
            return None
    return tuple(out)


def export_step(model: nn.Module, *, cfg: bool) -> fx.GraphModule:
    """Capture ``GuidedDenoiser(model, cfg)`` with ``torch.export`` (batch size symbolic).

    The example ``x`` is ``(2, *latent_shape(model))`` (:func:`~l2c_compile.families.latent_shape`:
    ``(C, H, W)``, or a video model's ``(C, F, H, W)``) in the model's dtype (``model_dtype``); only
    its batch is symbolic. Raises CompileError with export's first line when it cannot capture.
    """
    root = GuidedDenoiser(model, cfg=cfg, slice_halves=True)
    p = next(model.parameters())
    n = EXPORT_BATCH
    example = (torch.zeros(n, *latent_shape(model), dtype=model_dtype(model), device=p.device),
               torch.zeros(n, dtype=torch.float32, device=p.device),
               example_condition(model, n, cfg, p.device),
               torch.ones((), dtype=torch.float32, device=p.device))
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = ({0: batch}, {0: batch}, {0: batch}, None)
    try:
        with torch.no_grad(), _model_frames_kept(model):
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
        same = identity_input(node)
        if same is not None:
            env[node] = env[same]
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


@contextlib.contextmanager
def _model_frames_kept(model: nn.Module) -> Iterator[None]:
    """Have export record the frames of the model's own functions, not only of ``forward``s.

    Export keeps a node's stack frames named ``forward`` only, so every value a diffusers attention
    processor computes (``query = attn.to_q(h)``, in ``AttnProcessor.__call__``) would stand on the
    ``return self.processor(…)`` line and could not be named (``passes/naming.py``). Frames of the
    functions defined in the files of the model's own classes (and of the callables its modules
    hold, such as processors) are kept for the capture; without torch's hook for that, nothing is.
    """
    from torch.fx import proxy

    anchors = getattr(proxy, "_STACK_TRACE_ANCHORS", None)
    if not isinstance(anchors, set):
        yield
        return
    added = _model_code(model) - anchors
    anchors |= added
    try:
        yield
    finally:
        anchors -= added


def _model_code(model: nn.Module) -> set[tuple[str, str]]:
    """(file, function name) of every function in the source files that define the model's own
    (non-torch) module classes and the callables they hold, and of the functions defined inside
    those (diffusers' Wan attention applies its rotary embedding in a nested function)."""
    classes = set()
    for module in model.modules():
        classes.add(type(module))
        classes.update(type(v) for v in vars(module).values()
                       if callable(v) and not isinstance(v, nn.Module | torch.Tensor | type))
    files = {sys.modules.get(c.__module__) for c in classes if not c.__module__.startswith(("torch", "builtins"))}
    code: set[tuple[str, str]] = set()
    for source in files - {None}:
        for value in vars(source).values():
            members = vars(value).values() if isinstance(value, type) else (value,)
            for member in members:
                fn = getattr(member, "__func__", member)
                if isinstance(fn, types.FunctionType) and fn.__module__ == source.__name__:
                    todo = [fn.__code__]
                    while todo:
                        c = todo.pop()
                        code.add((c.co_filename, c.co_name))
                        todo += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return code


def _export_only(node: fx.Node) -> bool:
    """Nodes that exist only for export's own checks (the guard call, tensor metadata asserts)."""
    if node.op == "call_module" and str(node.target).startswith("_guards"):
        return True
    return node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default


def identity_input(node: fx.Node) -> fx.Node | None:
    """The input ``node`` returns unchanged, or None: an eval-mode dropout (``aten.dropout(x, p,
    train=False)``), or a floating tensor divided or multiplied by the number 1 or less 0 (diffusers'
    ``hidden_states / attn.rescale_output_factor``, ``scale * emb``). Each gives back ``x`` bit for
    bit, in its shape and dtype (a Python number never changes a floating tensor's dtype); ``x + 0``
    is not among them, since ``-0.0 + 0`` is ``+0.0``."""
    if node.op != "call_function":
        return None
    if node.target is torch.ops.aten.dropout.default:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train")
        return node.args[0] if train is False else None
    if node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    if node.target in (torch.ops.aten.div.Tensor, torch.ops.aten.sub.Tensor):
        x, one = a, b
    elif node.target is torch.ops.aten.mul.Tensor:
        x, one = (a, b) if isinstance(a, fx.Node) else (b, a)
    else:
        return None
    unit = 0 if node.target is torch.ops.aten.sub.Tensor else 1
    if not isinstance(x, fx.Node) or isinstance(one, bool) or not isinstance(one, int | float) or one != unit:
        return None
    val, out = x.meta.get("val"), node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not isinstance(out, torch.Tensor):
        return None
    return x if val.dtype.is_floating_point and out.dtype == val.dtype else None


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
    split_projections(gm, model)
    name_values(gm)
    return gm


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
