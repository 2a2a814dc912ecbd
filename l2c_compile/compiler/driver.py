"""``l2c_compile.compile``: model + sampler plan + schedule → a specialized CompiledSampler.

Pipeline (each step a pass in ``passes/``, run by the pass manager that checks the invariants):

    capture the guided step once (torch.fx, or torch.export for models fx cannot trace; values
    named from the source) ─► mark the declared sublayers by
    module scope ─► shape propagation (fake tensors) ─► hoist (what the trajectory fixes goes to a
    once-per-call prologue, batched over the steps)
    cache liveness over the whole plan (distinct masks, exports, drops)
    for each distinct step mask:  specialize ─► dce ─► casts ─► prune_chunks ─► prune_queries ─► fuse_reuse ─► dce
    emit one readable Python module (prologue, step functions, unrolled loop) ─► CompiledSampler

Deterministic: the same inputs give the same source and compile record (``CompiledSampler.record``,
:mod:`l2c_compile.runtime.record`; pass seconds go to ``CompiledSampler.timings``, never into the
record), which is what ``artifact.load`` relies on.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from l2c_compile.compiler.guidance import example_condition
from l2c_compile.compiler.passes.analysis import (
    count_linear_calls,
    graph_macs,
    propagate_shapes,
    tensor_bytes,
)
from l2c_compile.compiler.passes.base import SUBLAYER_META, CompileError
from l2c_compile.compiler.passes.casts import CastsConfig, drop_noop_casts
from l2c_compile.compiler.passes.codegen import StepContext, scope_members
from l2c_compile.compiler.passes.dce import dead_code
from l2c_compile.compiler.passes.emit import emit_module, hoisted_inputs, prologue_rows
from l2c_compile.compiler.passes.hoist import DEFAULT_LIMIT_BYTES, PROLOGUE_META, HoistConfig
from l2c_compile.compiler.passes.hoist import hoist as hoist_pass
from l2c_compile.compiler.passes.liveness import plan_cache
from l2c_compile.compiler.passes.manager import Pass, PassManager, PassReport
from l2c_compile.compiler.passes.prune_chunks import prune_chunks
from l2c_compile.compiler.passes.prune_queries import prune_queries
from l2c_compile.compiler.passes.specialize import SpecializeConfig, specialize
from l2c_compile.compiler.passes.sublayers import (
    MarkConfig,
    TrunkConfig,
    cache_slots,
    mark_sublayers,
    mark_trunk,
    sublayer_nodes,
    sublayer_paths,
    trunk_nodes,
)
from l2c_compile.compiler.passes.trace import CALLS_META, CAPTURE_META, trace_step
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, fp32_kept, kept_dtype, latent_shape, model_dtype
from l2c_compile.families.vocabulary import empty_mask
from l2c_compile.runtime import features
from l2c_compile.runtime.cuda_graph import check_cuda_graph_device
from l2c_compile.runtime.devices import resolve_device
from l2c_compile.runtime.manifest import BACKENDS
from l2c_compile.runtime.record import CompileRecord
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.runtime.sampler_inputs import check_weights
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def native_bf16(device: str | torch.device | None) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively: a CUDA GPU that supports it, or
    a CPU whose oneDNN runs bf16 GEMMs (features ``cuda_bf16`` / ``onednn_bf16``).
    """
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return features.has("cuda_bf16")
    return device.type == "cpu" and features.has("onednn_bf16")


def resolve_dtype(
    dtype: str | torch.dtype | None, device: str | torch.device | None = None
) -> torch.dtype | None:
    """Accept torch dtypes, their usual names and ``"auto"``; L2CError for anything else.

    ``"auto"``: bfloat16 where ``device`` has native bf16 matrix instructions
    (:func:`native_bf16`), else float32.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise L2CError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16, auto")
    return DTYPES[dtype]


def copied_dtype(t: torch.Tensor, dtype: torch.dtype | None, kept: Any) -> torch.dtype:
    """The dtype :func:`private_copy` gives tensor ``t`` for a requested ``dtype`` (None: its own):
    floating-point tensors take ``dtype``, those in ``kept`` (:func:`~l2c_compile.families.fp32_kept`
    of the model) never narrower than float32; other tensors keep theirs."""
    to = dtype if dtype is not None and t.is_floating_point() else t.dtype
    return kept_dtype(to, t.dtype) if id(t) in kept and t.is_floating_point() else to


def private_copy(
    model: nn.Module, *, device: torch.device | None = None, dtype: torch.dtype | None = None,
    share_weights: bool = False,
) -> nn.Module:
    """A deep copy of ``model`` whose floating-point tensors are converted on the way.

    Compiling never changes the caller's model (dtype, device, train/eval mode, submodules), and
    two samplers compiled from one model share no tensor. Each tensor is copied once, straight to
    the target ``device``/``dtype`` (like ``nn.Module.to``: only floating-point tensors change
    dtype), so the peak memory is the original plus one converted copy. The tensors a diffusers
    model keeps in float32 (:func:`~l2c_compile.families.fp32_kept`: Wan's norms, time embedder,
    adaLN and rotary tables) are never narrowed below float32, as ``from_pretrained(torch_dtype=…)``
    loads them.

    ``share_weights``: copy the modules but not the tensors: the copy's parameters and buffers are
    ``model``'s own (no memory for a second set of weights: what a 12 B-parameter FLUX.1 needs to
    sit beside its pipeline on one GPU). Only where nothing would be converted: L2CError when
    ``device``/``dtype`` ask for another device or dtype than a tensor has. The caller must then
    not move or convert ``model``'s weights in place (the sampler refuses a call after a dtype
    change, and a CUDA graph is captured again after a move).
    """
    memo: dict[int, object] = {}
    kept = fp32_kept(model) if dtype is not None else {}

    def target(t: torch.Tensor) -> tuple[torch.device, torch.dtype]:
        return device or t.device, copied_dtype(t, dtype, kept)

    def convert(t: torch.Tensor) -> torch.Tensor:
        to_device, to_dtype = target(t)
        return t.detach().to(device=to_device, dtype=to_dtype, copy=True)

    tensors = [*model.parameters(), *model.buffers()]
    if share_weights:
        for t in tensors:
            to_device, to_dtype = target(t)
            if (to_device.type, to_device.index or 0) != (t.device.type, t.device.index or 0) or to_dtype != t.dtype:
                raise L2CError(f"share_weights=True uses the model's own tensors, but they are {t.dtype} on "
                               f"{t.device} and the sampler asks for {to_dtype} on {to_device}: convert the "
                               "model first, or leave share_weights off")
        memo.update((id(t), t) for t in tensors)
        return copy.deepcopy(model, memo)
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(convert(p), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = convert(b)
    return copy.deepcopy(model, memo)


def check_schedule_type(schedule: object) -> None:
    """L2CError unless ``schedule`` is a :class:`~l2c_compile.schedule.Schedule` or None (a JSON
    document or a path is read with ``Schedule.load`` / ``Schedule.from_dict`` first)."""
    if schedule is not None and not isinstance(schedule, Schedule):
        raise L2CError(f"schedule must be a Schedule or None, got {type(schedule).__name__} "
                       "(read a schedule file with Schedule.load)")


def _fuse_pass():
    """The reuse-epilogue fusion pass, when the kernels package provides it."""
    try:
        from l2c_compile.compiler.passes.fuse_reuse import fuse_reuse
    except ImportError:
        return None
    return fuse_reuse


def compile(
    model: nn.Module,
    plan: SamplerPlan,
    schedule: Schedule | None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    backend: str = "eager",
    cfg: bool = True,
    fuse: bool = True,
    model_info: dict[str, Any] | None = None,
    cuda_graph: bool = False,
    hoist: bool = True,
    hoist_limit_bytes: int = DEFAULT_LIMIT_BYTES,
    share_weights: bool = False,
) -> CompiledSampler:
    """Compile ``schedule`` (a :class:`~l2c_compile.schedule.Schedule`; None = all-compute) for
    ``model`` and ``plan`` into a :class:`CompiledSampler`.

    ``cfg``: batch classifier-free guidance into every call (the scale is a run-time argument).
    ``fuse``: lower reuse epilogues to the fused kernels' custom ops (when available).
    The caller's ``model`` is never changed: the sampler owns a private copy of the weights
    (converted to ``dtype``/``device``). ``device`` must exist here (``L2CError`` otherwise).
    ``share_weights``: the sampler's modules are a copy but its parameters and buffers are
    ``model``'s own tensors, so several samplers of one model (and the model) hold one set of
    weights; L2CError when ``dtype``/``device`` would convert them (:func:`private_copy`).
    ``model_info``: ``{"name", "family", "config"}`` recorded in the artifact so ``load`` can rebuild
    the model; filled from the model itself when it was built by the registry.
    ``cuda_graph``: capture the whole trajectory into one CUDA graph on the first call and replay
    it for calls of the same shape (CUDA only; see :class:`~l2c_compile.runtime.sampler.CompiledSampler`).
    ``hoist``: compute what the trajectory fixes (timestep embeddings, adaLN modulations, prompt
    keys/values) once per call in a prologue before step 0, batched over the steps
    (``passes/hoist.py``); skipped, with the reason in ``record.hoisted``, when the hoisted tensors
    would hold more than ``hoist_limit_bytes`` per image.
    L2CError (one line) when ``schedule`` does not fit the model's blocks or ``plan``
    (:meth:`~l2c_compile.schedule.Schedule.check_fits`; the schedule's model name is not compared).
    """
    check_schedule_type(schedule)
    if isinstance(hoist_limit_bytes, bool) or not isinstance(hoist_limit_bytes, int) or hoist_limit_bytes < 0:
        raise L2CError(f"hoist_limit_bytes must be a non-negative whole number of bytes, got {hoist_limit_bytes!r}")
    if backend not in BACKENDS:
        raise L2CError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_weights(model)  # NaN/inf weights would compile into a sampler of black pictures
    model = private_copy(model, device=torch_device, dtype=torch_dtype, share_weights=share_weights).eval()
    if cuda_graph:
        check_cuda_graph_device(next(model.parameters()).device)
    depth = len(model.transformer_blocks())
    family = family_of(model)
    layout = family.layout(model)
    kinds = layout.kinds
    if schedule is None:
        masks = [empty_mask(kinds) for _ in plan.calls]
        trunk: list[bool] = []
    else:
        schedule.check_fits(layout, plan)  # the model's name is not compared: the caller chose it
        masks = [c.mask for c in schedule.calls]
        trunk = [c.trunk for c in schedule.calls] if any(c.trunk for c in schedule.calls) else []

    base = trace_step(model, cfg=cfg)
    if backend == "regional" and base.meta.get(CAPTURE_META) == "export":
        raise L2CError(
            f"backend 'regional' compiles the sublayer modules the step code calls, but "
            f"{type(model).__name__} is captured with torch.export, whose step code inlines them: "
            "use backend 'inductor'"
        )
    paths = sublayer_paths(model)
    if layout.depth != depth:
        raise CompileError(f"{type(model).__name__} declares {layout.depth} sublayer blocks but has {depth}")
    outputs = family.outputs(model)
    slots = cache_slots(outputs)
    multi = tuple((k, v) for k, v in slots.items() if len(v) > 1)
    marks = [Pass("mark_sublayers", mark_sublayers, MarkConfig.of(paths, outputs))]
    if trunk:  # only then: the step code of every other schedule stays as it was
        marks.append(Pass("mark_trunk", mark_trunk, TrunkConfig(family.blocks(model)[-1][0])))
    base, reports = PassManager(marks, check=False).run(base)
    trunk_slots = tuple(n.meta[SUBLAYER_META] for n in trunk_nodes(base))
    device_, dtype_ = next(model.parameters()).device, model_dtype(model)
    example = [torch.zeros(1, *latent_shape(model), dtype=dtype_, device=device_),  # (1, C, *spatial)
               torch.zeros(1, dtype=torch.float32, device=device_),
               example_condition(model, 1, cfg, device_),
               torch.ones((), dtype=torch.float32, device=device_)]
    propagate_shapes(base, example)
    entry_bytes = {k: tensor_bytes(n) for k, n in sublayer_nodes(base).items()}  # per image, CFG rows included
    rows = 2 if cfg else 1
    macs_uncached = graph_macs(base, rows)
    scopes = scope_members(base)  # before hoisting: the printer collapses modules that run whole
    calls = dict(base.meta.get(CALLS_META, {}))  # ... with the arguments the trace called them with
    timings: dict[str, float] = {}
    trace_reports = [_record(r, timings) for r in reports]
    prologue, hoisted = None, None
    if hoist:
        config = HoistConfig(steps=len(prologue_rows(plan)), rows_per_image=rows, limit_bytes=hoist_limit_bytes)
        base, reps = PassManager([Pass("hoist", hoist_pass, config)], graph="the traced step").run(base)
        trace_reports.append(_record(reps[0], timings))
        prologue, hoisted = base.meta.get(PROLOGUE_META), dict(reps[0].stats)

    mode = schedule.mode if schedule is not None else "cache"  # "drop": masked sublayers add nothing, read nothing
    cache = plan_cache(masks, depth, mode, kinds, layout=None if layout.is_uniform else layout, slots=slots,
                       trunk=trunk, trunk_slots=trunk_slots)
    fuse_fn = _fuse_pass() if fuse else None
    blocks = {key[1]: path.rsplit(".", 1)[0] for key, path in paths.items()}
    ctx = StepContext(model=model, blocks=blocks, sublayers=paths, base_scopes=scopes, calls=calls)
    graphs, graph_reports = [], []
    for g, mask in enumerate(cache.masks):
        exports = cache.exports[g]
        config = SpecializeConfig(mask, tuple(exports), mode, kinds, multi, cache.reuses_trunk(g))
        passes = [Pass("specialize", specialize, config), Pass("dce", dead_code),
                  Pass("casts", drop_noop_casts, CastsConfig(ctx)), Pass("prune_chunks", prune_chunks),
                  Pass("prune_queries", prune_queries)]
        if fuse_fn is not None:
            passes += [Pass("fuse_reuse", fuse_fn), Pass("dce", dead_code)]
        gm, reps = PassManager(passes, graph=f"step graph {g}: {config.describe()}").run(base)
        graphs.append(gm)
        graph_reports.append({
            "graph": g,
            "calls": cache.graph_calls(g),
            **{f"reuse_{k}": sorted(ids) for k, ids in zip(kinds, mask, strict=True)},
            **({"reuse_trunk": True} if cache.reuses_trunk(g) else {}),
            "exports": len(exports),
            "linear_calls": count_linear_calls(gm),
            "macs_per_image": graph_macs(gm, rows),
            "passes": [_record(r, timings) for r in reps],
        })

    roles = [call.role for call in plan.calls]
    name = (model_info or {}).get("name") or type(model).__name__
    title = (f"model {name} · {str(dtype_).removeprefix('torch.')} · sampler {plan.sampler} · NFE {plan.nfe}"
             f" · CFG {'batched' if cfg else 'off'}")
    if prologue is not None:
        prologue = prologue.restricted({h for gm in graphs for h in hoisted_inputs(gm)})
        hoisted.update(outputs=len(prologue.names), outputs_per_step=sum(prologue.per_step),
                       bytes_per_image=prologue.bytes_per_image, macs_per_image=prologue.macs_per_image)
    source = emit_module(graphs, plan, cache, roles, title, ctx, mode, prologue)
    per_call = [graph_reports[cache.calls[i].graph]["macs_per_image"] for i in range(plan.nfe)]
    macs_prologue = prologue.macs_per_image if prologue is not None else 0
    record = CompileRecord(
        model=model_info or {"name": name},
        plan=plan,
        cfg=cfg,
        dtype=str(dtype_).removeprefix("torch."),
        backend=backend,
        cuda_graph=cuda_graph,
        schedule=schedule,
        graphs=tuple(graph_reports),
        peak_live_cache_entries=cache.peak_live_entries,
        peak_cache_bytes_per_image=cache.peak_bytes(entry_bytes),
        macs_uncached=macs_uncached * plan.nfe,
        macs_compiled=sum(per_call) + macs_prologue,
        trace=tuple(trace_reports),
        fuse=fuse,
        hoist=hoist,
        hoist_limit_bytes=hoist_limit_bytes,
        hoisted=hoisted,
        # this machine's slower paths for these weights and backend; load derives them again
        fallbacks=tuple(features.fallback_notes(dtype_, device_, backend)),
    )
    try:
        sampler = CompiledSampler(model, source, record, backend=backend, cuda_graph=cuda_graph)
    except CompileError:
        raise
    except Exception as exc:  # the generated code must always load; anything else is a bug
        raise CompileError(f"generated sampler failed to load: {exc}") from exc
    sampler.timings = timings
    return sampler


def _record(report: PassReport, timings: dict[str, float]) -> dict[str, Any]:
    """A pass report for the manifest: its seconds go to ``timings`` (never into hashed files)."""
    timings[report.name] = timings.get(report.name, 0.0) + report.seconds
    return {"name": report.name, "modified": report.modified, "stats": report.stats}
