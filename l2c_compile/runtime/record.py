"""The compile record: what :func:`l2c_compile.compile` made, typed (:class:`CompileRecord`).

Every compiled sampler carries one (``CompiledSampler.record``); the library reads its fields.
Its JSON view, :meth:`CompileRecord.to_dict`, is ``CompiledSampler.info`` for users and the body of
an artifact's ``manifest.json`` (:func:`~l2c_compile.runtime.manifest.artifact_manifest`): the keys,
their order and their values are the artifact format's, so the same record gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule


@dataclass(frozen=True)
class CompileRecord:
    """One compile of (model, sampler plan, schedule), as recorded in the artifact.

    ``model``: the model record ``load`` rebuilds the model from (``{"name", "family", "kwargs"}``
    for the registry, a diffusers class and config for a diffusers model; a JSON object).
    ``plan``: the sampler plan (written as its :meth:`~l2c_compile.samplers.base.SamplerPlan.describe`).
    ``schedule``: None for an all-compute sampler. ``graphs``: one report per distinct step graph
    (its calls, reused block ids per kind, exports, linear calls, MACs per image, pass reports);
    ``peak_live_cache_entries`` / ``peak_cache_bytes_per_image``: the most cached tensors alive at
    once over the trajectory, and the most bytes they hold at once per image (each entry's size from
    the captured step's shapes; the uncached sampler holds none: 0);
    ``trace``: the reports of the passes run once on the traced step. ``macs_uncached`` and
    ``macs_compiled``: multiply-accumulates per image over the whole trajectory, without the cache
    and as compiled (the prologue included). ``hoisted``: the hoist pass's statistics (None when
    ``hoist`` is off). ``fallbacks``: one line per slower path taken for lack of a CPU/GPU feature
    (:func:`~l2c_compile.runtime.features.fallback_notes`); written only when there is one.
    """

    model: dict[str, Any]
    plan: SamplerPlan
    cfg: bool  # classifier-free guidance batched into every call
    dtype: str  # the weights' dtype name: float32 | bfloat16 | float16
    backend: str  # eager | inductor | regional (runtime/manifest.BACKENDS)
    cuda_graph: bool
    schedule: Schedule | None
    graphs: tuple[dict[str, Any], ...]
    peak_live_cache_entries: int
    peak_cache_bytes_per_image: int  # the most bytes the cache holds at once, per image (CFG rows included)
    macs_uncached: int
    macs_compiled: int
    trace: tuple[dict[str, Any], ...]
    fuse: bool
    hoist: bool
    hoist_limit_bytes: int  # per image
    hoisted: dict[str, Any] | None
    fallbacks: tuple[str, ...] = field(default=())

    @property
    def model_name(self) -> str | None:
        """The model record's name (a registry name, or what a diffusers folder's config gives)."""
        name = self.model.get("name")
        return None if name is None else str(name)

    @property
    def nfe(self) -> int:
        """Model calls per trajectory."""
        return self.plan.nfe

    @property
    def distinct_graphs(self) -> int:
        """Number of distinct step graphs (one per distinct reuse mask)."""
        return len(self.graphs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON view: ``CompiledSampler.info`` and the body of ``manifest.json``, key order
        included (``fallbacks`` only when there is one, so the manifest of a machine where the
        fast paths run is the same on every such machine). The model record is shared, not copied."""
        out: dict[str, Any] = {
            "model": self.model,
            "sampler": self.plan.describe(),
            "nfe": self.plan.nfe,
            "cfg": self.cfg,
            "dtype": self.dtype,
            "backend": self.backend,
            "cuda_graph": self.cuda_graph,
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
            "graphs": list(self.graphs),
            "distinct_graphs": self.distinct_graphs,
            "peak_live_cache_entries": self.peak_live_cache_entries,
            "peak_cache_bytes_per_image": self.peak_cache_bytes_per_image,
            "macs_per_image": {"uncached": self.macs_uncached, "compiled": self.macs_compiled},
            "trace": list(self.trace),
            "fuse": self.fuse,
            "hoist": self.hoist,
            "hoist_limit_bytes": self.hoist_limit_bytes,
            "hoisted": self.hoisted,
        }
        if self.fallbacks:
            out["fallbacks"] = list(self.fallbacks)
        return out
