"""``compile_pipeline``: a diffusers pipeline whose denoising loop is compiled code.

One drop-in class per pipeline family, each in its own module and registered in :data:`PIPELINES`
by the pipeline's class name: ``DiTPipeline`` (:mod:`.base`), ``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline`` (:mod:`.pixart`), ``StableDiffusion3Pipeline`` (:mod:`.sd3`), ``FluxPipeline``
(:mod:`.flux`), ``WanPipeline`` (:mod:`.wan`, Wan 2.1 text-to-video). A drop-in
takes the pipeline's own arguments and returns its own output type; ``schedule=None`` reproduces
``pipe(...)``.
"""

from __future__ import annotations

from typing import Any

from l2c_compile.compiler.driver import check_schedule_type
from l2c_compile.diffusers.flow_schedulers import is_flow_scheduler
from l2c_compile.diffusers.pipelines.base import CompiledPipeline
from l2c_compile.diffusers.pipelines.flux import CompiledFluxPipeline
from l2c_compile.diffusers.pipelines.pixart import CompiledPixArtPipeline
from l2c_compile.diffusers.pipelines.sd3 import CompiledSD3Pipeline
from l2c_compile.diffusers.pipelines.wan import CompiledWanPipeline
from l2c_compile.diffusers.scheduler_plans import pipeline_plan
from l2c_compile.errors import L2CError
from l2c_compile.schedule import Schedule

__all__ = ["PIPELINES", "CompiledFluxPipeline", "CompiledPipeline", "CompiledPixArtPipeline", "CompiledSD3Pipeline",
           "CompiledWanPipeline",
           "compile_pipeline", "pipeline_plan"]

# The drop-in for each diffusers pipeline class (a subclass of one of these gets its drop-in too).
PIPELINES: dict[str, type[CompiledPipeline]] = {
    "DiTPipeline": CompiledPipeline,
    "PixArtAlphaPipeline": CompiledPixArtPipeline,
    "PixArtSigmaPipeline": CompiledPixArtPipeline,
    "StableDiffusion3Pipeline": CompiledSD3Pipeline,
    "FluxPipeline": CompiledFluxPipeline,
    "WanPipeline": CompiledWanPipeline,
}


def compile_pipeline(pipe: Any, schedule: Schedule | None = None, *, memory_budget: int | None = None,
                     **compile_kwargs: Any) -> CompiledPipeline:
    """A drop-in for ``pipe`` (a diffusers ``DiTPipeline``, ``PixArtAlphaPipeline``,
    ``PixArtSigmaPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline`` or ``WanPipeline``:
    :data:`PIPELINES`) running ``schedule`` (None: compute everything) as compiled code;
    ``compile_kwargs`` go to :func:`l2c_compile.compile` (``fuse``, ``backend``, ``cuda_graph``,
    ``dtype``, ``device``: those two apply to the compiled sampler's own copy of the weights; the
    pipeline and its components are never changed). ``memory_budget``: bytes a call's planned cache
    and new weights copy may take, checked before any work (None: the target device's free memory;
    only drop-ins that plan their memory take it: ``WanPipeline``). L2CError for an unsupported
    pipeline or scheduler, a scheduler of the other sort (a flow-matching one for an ε pipeline, a
    VP one for SD3, FLUX or Wan), or a pipeline the drop-in refuses (Wan 2.2's two experts)."""
    cls = next((PIPELINES[c.__name__] for c in type(pipe).__mro__ if c.__name__ in PIPELINES), None)
    if cls is None:
        raise L2CError(f"compile_pipeline supports {', '.join(PIPELINES)}, got {type(pipe).__name__}")
    for key in ("cfg", "model_info"):
        if key in compile_kwargs:
            raise L2CError(f"compile_pipeline sets {key} itself (from guidance_scale and the pipeline)")
    name, scheduler = type(pipe).__name__, type(pipe.scheduler).__name__
    if is_flow_scheduler(pipe.scheduler) != cls.flow_matching:
        raise L2CError(f"{name} samples with flow matching (velocity); its {scheduler} is not a flow-matching "
                       "scheduler" if cls.flow_matching else
                       f"{name} samples with ε prediction; its {scheduler} is a flow-matching (velocity) scheduler")
    if memory_budget is not None and not getattr(cls, "checks_memory", False):
        raise L2CError(f"memory_budget is for drop-ins that plan their memory (WanPipeline), not {name}")
    if memory_budget is not None and (isinstance(memory_budget, bool) or not isinstance(memory_budget, int)
                                      or memory_budget < 0):
        raise L2CError(f"memory_budget must be a non-negative number of bytes, got {memory_budget!r}")
    compiled = cls(pipe, schedule, compile_kwargs)
    if memory_budget is not None:
        compiled.memory_budget = memory_budget
    compiled.check_scheduler()  # an unsupported scheduler or setting fails here, not on the first call
    check_schedule_type(schedule)
    compiled.check_schedule_model()  # ... and a schedule made from another model's folder
    return compiled
