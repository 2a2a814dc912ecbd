"""Checking an artifact against the reference executor, and the headline numbers of a compile.

The library side of ``l2c-compile verify`` and ``compile`` (and of the demo): the CLI only prints.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch

from l2c_compile.compiler import reference
from l2c_compile.compiler.memory import check_sampler_memory
from l2c_compile.errors import L2CError
from l2c_compile.families import latent_shape
from l2c_compile.runtime.artifact import load
from l2c_compile.runtime.record import CompileRecord
from l2c_compile.runtime.sampler import CompiledSampler


@dataclass(frozen=True)
class VerifyResult:
    """Compiled vs reference executor on the same seeded inputs (errors relative to the reference).

    ``metric`` (``max_rel_error`` for float32, ``rms_rel_error`` for bf16/fp16) against
    ``tolerance`` decides ``ok``; ``failure`` says in one line what failed and by how much
    (:mod:`l2c_compile.runtime.tolerances` explains the choice and lists the measured tolerances).
    """

    artifact: str
    model: str | None
    dtype: str
    backend: str  # eager | inductor | regional: what ran the compiled sampler
    reference_dtype: str
    cuda_graph: bool
    max_abs_error: float
    max_rel_error: float  # max |diff| / max |ref|
    rms_rel_error: float  # ‖diff‖₂ / ‖ref‖₂
    distinct_graphs: int
    macs_uncached: int
    macs_compiled: int
    batch: int
    seed: int
    metric: str
    tolerance: float
    ok: bool
    failure: str | None = None
    fallbacks: tuple[str, ...] = ()  # slower paths taken for lack of a CPU/GPU feature (one line each)

    def to_dict(self) -> dict[str, Any]:
        """The fields, for JSON and tables."""
        return asdict(self)


def tensor_dtypes(model: torch.nn.Module) -> dict[str, torch.dtype]:
    """The dtype of each parameter and buffer of ``model``, by name."""
    return {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}


def restore_dtypes(model: torch.nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Convert each parameter and buffer of ``model`` back to its dtype in ``dtypes``
    (:func:`tensor_dtypes`), in place, as ``nn.Module.to`` converts (parameters keep their identity)."""
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            dtype = dtypes.get(f"{prefix}.{name}" if prefix else name)  # None: shared, named (and done) elsewhere
            if dtype is not None:
                p.data = p.data.to(dtype)
        for name, b in list(module.named_buffers(recurse=False)):
            dtype = dtypes.get(f"{prefix}.{name}" if prefix else name)
            if dtype is not None:
                module._buffers[name] = b.to(dtype)


def seeded_inputs(
    compiled: CompiledSampler, batch: int, seed: int, device: str | torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (batch, C, H, W) (a video model's (batch, C, F, H, W)) and labels (batch,) drawn on CPU
    from ``seed``, moved to ``device``.

    A text-conditioned model (PixArt) gets a random prompt condition instead of labels: standard
    normal embeddings, and a mask whose row ``i`` pads its last ``i mod L`` tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    m = compiled.model
    noise = torch.randn(batch, *latent_shape(m), generator=gen)  # (batch, C, *spatial)
    if hasattr(m, "example_condition"):
        y = m.example_condition(batch, compiled.cfg, "cpu").float()  # (N, [2,] L, D + 1)
        y[..., :-1] = torch.randn(y[..., :-1].shape, generator=gen)
        length = y.shape[-2]
        for i in range(batch):
            if i % length:
                y[i, ..., length - i % length :, -1] = 0.0
        return noise.to(device), y.to(device)
    labels = torch.randint(0, m.null_class, (batch,), generator=gen)  # real classes are 0..null-1
    return noise.to(device), labels.to(device)


def verify_artifact(
    directory: str | os.PathLike[str],
    *,
    batch: int = 2,
    seed: int = 0,
    device: str = "cpu",
    cfg_scale: float | None = None,
    cuda_graph: bool | None = None,
    tolerance: float | None = None,
) -> VerifyResult:
    """Load an artifact (all of ``load``'s checks) and run it and the float32 reference executor on
    the same seeded inputs. ``cfg_scale`` defaults to the model's; ``tolerance`` overrides the
    measured one of :mod:`l2c_compile.runtime.tolerances`. Raises L2CError when the artifact is refused
    or ``device`` is not available.
    """
    from l2c_compile import progress
    from l2c_compile.runtime.backends import eager_regions
    from l2c_compile.runtime.devices import resolve_device
    from l2c_compile.runtime.tolerances import verdict

    if batch < 1:
        raise L2CError(f"batch must be >= 1, got {batch}")
    resolve_device(device)
    compiled = load(directory, device=device, cuda_graph=cuda_graph)
    check_sampler_memory(compiled, batch, device)  # before the first call, not after an allocation failure
    record = compiled.record
    plan, sched = record.plan, record.schedule
    if compiled.cfg and cfg_scale is None:
        cfg_scale = float(record.model.get("default_cfg_scale", 4.0))
    scale = cfg_scale if compiled.cfg else None
    noise, labels = seeded_inputs(compiled, batch, seed, device)
    with (
        progress.task(f"compiled sampler ({record.dtype})", plan.nfe, "model calls"),
        progress.counting_model_calls(compiled),
    ):
        got = compiled(noise, labels, scale)
    # The reference runs in float32 whatever the artifact's dtype: it is the oracle.
    dtypes = tensor_dtypes(compiled.model)  # each back to its own afterwards (some stay float32)
    ref_model = compiled.model.float()
    try:
        with (
            eager_regions(ref_model),  # a regional sampler compiled the sublayers of these weights
            progress.task("reference executor (float32)", plan.nfe, "model calls"),
            progress.counting_model_calls(ref_model),
        ):
            want = reference.sample(ref_model, plan, sched, noise.float(), labels, scale)
    finally:
        restore_dtypes(compiled.model, dtypes)
    diff = got.float() - want
    measured = {
        "artifact": str(directory),
        "model": record.model_name,
        "dtype": record.dtype,
        "backend": compiled.backend,
        "reference_dtype": "float32",
        "cuda_graph": compiled.cuda_graph,
        "max_abs_error": float(diff.abs().max()),
        "max_rel_error": float(diff.abs().max() / want.abs().max().clamp_min(1e-30)),
        "rms_rel_error": float(diff.norm() / want.norm().clamp_min(1e-30)),
        "distinct_graphs": record.distinct_graphs,
        "macs_uncached": record.macs_uncached,
        "macs_compiled": record.macs_compiled,
        "batch": batch,
        "seed": seed,
    }
    return VerifyResult(**measured, **verdict(measured, tolerance), fallbacks=record.fallbacks)


def compile_summary(record: CompileRecord) -> dict[str, Any]:
    """The headline numbers of a compile record: sizes, MACs, summed pass statistics, and
    ``fallbacks``: the slower paths taken for lack of a CPU/GPU feature (a list of one-line
    notes, empty where the fast paths run)."""
    passes: dict[str, dict[str, float]] = {}
    for g in record.graphs:
        for rep in g["passes"]:
            agg = passes.setdefault(rep["name"], {})
            for k, v in rep["stats"].items():
                if isinstance(v, int | float):
                    agg[k] = agg.get(k, 0) + v
    return {
        "model": record.model_name,
        "sampler": record.plan.sampler,
        "nfe": record.nfe,
        "dtype": record.dtype,
        "cuda_graph": record.cuda_graph,
        "distinct_graphs": record.distinct_graphs,
        "peak_live_cache_entries": record.peak_live_cache_entries,
        "peak_cache_bytes_per_image": record.peak_cache_bytes_per_image,  # the uncached sampler's: 0
        "macs_uncached": record.macs_uncached,
        "macs_compiled": record.macs_compiled,
        "ideal_speedup": round(record.macs_uncached / max(record.macs_compiled, 1), 4),
        "hoist": hoist_summary(record),
        "passes": passes,
        "fallbacks": list(record.fallbacks),  # one line each; the CLI prints them, not as a row
    }


def hoist_summary(record: CompileRecord) -> str:
    """What the hoist pass moved into the prologue, in one line (or why it did not)."""
    if not record.hoist:
        return "off"
    stats = record.hoisted or {}
    if stats.get("skipped"):
        return str(stats["skipped"])
    if not stats.get("outputs"):
        return "nothing to hoist"
    return (f"{stats['nodes']} nodes, {stats['gemms']} GEMMs ({stats['gemms_batched_over_steps']} batched over "
            f"{stats['steps']} timesteps) into the prologue; {stats['outputs']} tensors "
            f"({stats['outputs_per_step']} per step), {stats['bytes_per_image'] / 2**20:.3f} MiB per image")
