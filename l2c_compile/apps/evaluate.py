"""Sample-quality evaluation of a schedule, behind `l2c-compile eval` and `benchmarks/quality.py`.

One evaluation draws K class-balanced, seeded samples twice — with the compiled sampler for the
schedule and with the compiled uncached sampler, from the *same* noise and labels — and reports
FID, precision, recall and class accuracy of both, the PSNR of each cached sample against its
uncached twin, the MACs of both trajectories (thop convention, spec §5.3), the sublayers the
schedule removes, and the measured time per image on this machine.

FID and precision/recall use the Fashion-MNIST classifier's features (see
:mod:`l2c_compile.metrics.quality`), so only models that draw 1×32×32 Fashion-MNIST images in 10
classes can be evaluated; the numbers are labelled "FID (Fashion-MNIST features)" everywhere.

Under torchrun every rank draws a share of the samples (whole batches, dealt round-robin) and the
metrics combine the ranks' features before scoring, so K ranks report what one process would for
the same seeds (to float rounding).
"""

from __future__ import annotations

import contextvars
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from l2c_compile import progress as bars
from l2c_compile.errors import L2CError
from l2c_compile.metrics.quality import has_feature_network as has_feature_network  # re-exported
from l2c_compile.models.select import make_spec_plan

if TYPE_CHECKING:
    from l2c_compile.families.vocabulary import Layout
    from l2c_compile.schedule import Schedule

ROUTER_SUFFIXES = (".safetensors", ".pt", ".pth")
MIN_SAMPLES = 4  # precision/recall use each sample's 3 nearest neighbours among the others
# Images per sampler call. Small batches keep a step's activations in the CPU caches (the MLP's
# hidden tensor of 16 images with CFG is 4 MiB; of 250 images, 65 MiB, freshly mapped and
# page-faulted on every call): measured on a 2-core AMD EPYC, 1 thread, DiT-FMNIST DDIM-20,
# 92 ms of CPU per image at 16 against 132 ms at 256 (benchmarks/eval_throughput.py).
DEFAULT_BATCH = 16
Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# Inputs: model, plan, schedule, seeded noise
# ---------------------------------------------------------------------------------------------


def require_feature_network(spec: Any) -> None:
    """L2CError unless :func:`has_feature_network` holds for ``spec``."""
    if not has_feature_network(spec):
        raise L2CError(
            f"{spec.name} has no feature network for FID: only models drawing 1x32x32 "
            f"Fashion-MNIST images in 10 classes can be evaluated (e.g. DiT-FMNIST, U-ViT-FMNIST), "
            f"got {'x'.join(map(str, spec.latent_shape))} with {spec.num_classes} classes"
        )


def load_model(spec: Any) -> nn.Module:
    """The spec's model with its shipped weights, in eval mode; L2CError when it ships none."""
    from l2c_compile.models.registry import build_model, load_checkpoint

    ckpt = getattr(spec, "checkpoint", None)
    if not ckpt or not Path(ckpt).is_file():
        raise L2CError(f"{spec.name} ships no weights; evaluation needs a trained model")
    model = build_model(spec)
    load_checkpoint(model, ckpt)
    return model.eval().requires_grad_(False)


def resolve_schedule(
    spec: Any, plan: Any, layout: Layout, schedule: Path | None, threshold: float | None = None
) -> Schedule:
    """The schedule to evaluate: a schedule JSON, a router file, or (None) the shipped router.

    ``layout``: the model's blocks and their kinds; a schedule JSON must fit it, ``plan`` and
    ``spec.name`` (:meth:`~l2c_compile.schedule.Schedule.check_fits`, L2CError otherwise)."""
    from l2c_compile.apps.demo import shipped_router
    from l2c_compile.schedule import Schedule, default_threshold, import_router

    depth = layout.depth
    theta = threshold if threshold is not None else default_threshold(spec.family)
    if schedule is None:
        router = shipped_router(spec.name, plan.sampler, plan.nfe)
        if router is None:
            raise L2CError(
                f"no shipped router for {spec.name} {plan.sampler} NFE {plan.nfe}; "
                "pass --schedule FILE (a schedule JSON or a router file)"
            )
        return import_router(router, plan, model=spec.name, depth=depth, threshold=theta)
    path = Path(schedule)
    if path.suffix in ROUTER_SUFFIXES:
        return import_router(path, plan, model=spec.name, depth=depth, threshold=theta)
    sched = Schedule.load(path)
    sched.check_fits(layout, plan, spec.name)
    return sched


def eval_inputs(
    n: int, latent_shape: tuple[int, ...], num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded noise (n, C, H, W) and class-balanced labels (n,): class i % num_classes, shuffled."""
    if n < MIN_SAMPLES:
        raise L2CError(
            f"evaluation needs at least {MIN_SAMPLES} samples (k-NN precision/recall with k = 3), got {n}"
        )
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, *latent_shape, generator=gen)  # (n, C, H, W)
    # Every class gets ⌊n/C⌋ or ⌈n/C⌉ samples; the shuffle only decides which noise each gets.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # (n,)
    return noise, labels


def shard_indices(n: int, batch: int, rank: int, world: int) -> tuple[torch.Tensor, int]:
    """The sample indices ``rank`` of ``world`` draws, and the batch size every rank uses.

    Whole batches are dealt round-robin (batch b goes to rank b mod world), so each sampler call
    sees the same batch it would in one process. The batch shrinks when there are fewer batches
    than ranks, so that every rank has at least one.
    """
    if not 0 <= rank < world:
        raise L2CError(f"rank {rank} is not in a world of {world}")
    if n < world:
        raise L2CError(f"{n} samples cannot be shared by {world} ranks; draw at least {world}")
    if batch < 1:
        raise L2CError(f"batch must be >= 1, got {batch}")
    batch = min(batch, n // world)
    starts = range(rank * batch, n, world * batch)
    return torch.cat([torch.arange(s, min(s + batch, n)) for s in starts]), batch


def _world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed job this process is in, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _metric_group() -> Any:
    """The process group the metrics gather over: the default one, or gloo beside NCCL.

    The metric states live on the CPU (the classifier runs there), which NCCL cannot gather.
    """
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() != "gloo":
        return dist.new_group(backend="gloo")
    return None


# ---------------------------------------------------------------------------------------------
# Sampling and metrics
# ---------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Images drawn by one sampler, with the time they took."""

    images: torch.Tensor  # (N, C, H, W), clamped to [-1, 1]
    seconds_per_image: float  # median over batches of (batch time / batch size), on one worker
    seconds: float = 0.0  # wall time of the whole draw (all workers)
    workers: int = 1  # batches drawn at once, each by one worker

    @property
    def images_per_second(self) -> float:
        """Throughput of the whole draw: images / wall seconds."""
        return len(self.images) / self.seconds if self.seconds > 0 else float("inf")


def default_workers(device: str | torch.device = "cpu") -> int:
    """Workers ``draw`` uses by default: one per intra-op thread torch has on the CPU, else one.

    On the CPU, W workers with one thread each beat one worker with W threads: a model call at
    eval's batch sizes is many small ops, each of which synchronises the threads of a parallel
    region, and on a machine shared with other jobs a descheduled thread stalls them all
    (measured: benchmarks/eval_throughput.py).
    """
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


def draw(
    sampler: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    labels: torch.Tensor,
    cfg_scale: float | None,
    batch: int = DEFAULT_BATCH,
    workers: int = 1,
) -> Samples:
    """Run ``sampler(noise, labels, cfg_scale)`` batch by batch; images and times.

    ``workers`` > 1 draws that many batches at once, each in its own thread with one intra-op
    torch thread (for CPU samplers; torch ops release the GIL). Every batch is the same slice
    of the inputs whatever ``workers`` is, and images come back in input order, so the result
    does not depend on it (each sample depends only on its own noise and label).
    """
    if batch < 1:
        raise L2CError(f"batch must be >= 1, got {batch}")
    if workers < 1:
        raise L2CError(f"workers must be >= 1, got {workers}")
    starts = range(0, len(noise), batch)

    def one(i: int) -> tuple[torch.Tensor, float]:
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = sampler(noise[i : i + batch], labels[i : i + batch], cfg_scale)  # (b, C, H, W)
            if out.is_cuda:
                torch.cuda.synchronize(out.device)  # the kernels are queued: wait before timing
            seconds = (time.perf_counter() - t0) / len(out)
            return out.float().clamp(-1, 1), seconds

    t0 = time.perf_counter()
    if workers == 1 or len(starts) == 1:
        results = [one(i) for i in starts]
        workers = 1
    else:
        threads = torch.get_num_threads()
        try:
            # set_num_threads is per thread for OpenMP: each worker sets its own.
            with ThreadPoolExecutor(
                workers, initializer=torch.set_num_threads, initargs=(1,)
            ) as pool:
                # Each batch runs in a copy of the caller's context: progress bars keep counting.
                futures = [pool.submit(contextvars.copy_context().run, one, i) for i in starts]
                results = [f.result() for f in futures]
        finally:
            torch.set_num_threads(threads)  # MKL's thread count is process-wide
    seconds = time.perf_counter() - t0
    images = torch.cat([out for out, _ in results])
    # The median shrugs off a batch slowed by other work on a shared machine.
    per_image = statistics.median(s for _, s in results)
    return Samples(images, per_image, seconds, workers)


def quality(
    images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
) -> dict[str, float]:
    """FID, precision, recall, class accuracy (+ PSNR against ``reference``), all as floats."""
    from l2c_compile.metrics.quality import evaluate

    return {k: float(v) for k, v in evaluate(images, labels, reference).items()}


# ---------------------------------------------------------------------------------------------
# One evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """What `l2c-compile eval` evaluates."""

    model: str
    nfe: int
    sampler: str | None = None
    schedule: Path | None = None  # None: the shipped router for (model, sampler, NFE)
    threshold: float | None = None  # θ when a router is thresholded (None: the family's)
    samples: int = 1000
    seed: int = 0
    cfg_scale: float | None = None  # None: the model's default
    batch: int = DEFAULT_BATCH
    workers: int | None = None  # batches drawn at once (None: default_workers(device))
    device: str = "cpu"  # where the samplers run (under torchrun with GPUs: each rank's own)
    backend: str | None = None  # how the samplers run (None: default_backend(device))


def default_backend(device: str) -> str:
    """``"regional"`` on CPU (oneDNN linears and compiled sublayers: about 1.9× the eager draw of
    DiT-FMNIST, README "Backends"), ``"eager"`` elsewhere (no compile to wait for)."""
    return "regional" if torch.device(device).type == "cpu" else "eager"


def run_eval(cfg: EvalConfig, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Evaluate one schedule against the uncached sampler at the same seeds; return the report.

    Under torch.distributed every rank must call it: each draws and featurizes its share of the
    samples and every rank returns the same report (whose latency is rank 0's share).
    Latency: ``latency_per_image*_s`` is the median over batches of one worker's batch time per
    image (``workers`` batches run at once), ``images_per_second*`` the throughput of the whole
    draw, ``stage_seconds`` the wall time of setup, compiling, each draw and scoring.
    """
    import l2c_compile
    from l2c_compile.families import family_of
    from l2c_compile.metrics.macs import timing_note
    from l2c_compile.metrics.quality import SampleQuality, metric_names
    from l2c_compile.models.registry import get_spec
    from l2c_compile.schedule.summary import schedule_summary

    started = time.perf_counter()
    workers = default_workers(cfg.device) if cfg.workers is None else cfg.workers
    if workers < 1:
        raise L2CError(f"workers must be >= 1, got {workers}")
    spec = get_spec(cfg.model)
    require_feature_network(spec)
    model = load_model(spec)
    plan = make_spec_plan(spec, cfg.sampler, cfg.nfe)
    sched = resolve_schedule(spec, plan, family_of(model).layout(model), cfg.schedule, cfg.threshold)
    scale = spec.default_cfg_scale if cfg.cfg_scale is None else cfg.cfg_scale
    noise, labels = eval_inputs(cfg.samples, spec.latent_shape, spec.num_classes, cfg.seed)
    rank, world = _world()
    mine, batch = shard_indices(cfg.samples, cfg.batch, rank, world)
    noise, labels = noise[mine].to(cfg.device), labels[mine].to(cfg.device)

    progress("compiling the cached and the uncached sampler")
    stages = {"setup": time.perf_counter() - started}
    t0 = time.perf_counter()
    info = spec.to_dict()
    backend = cfg.backend or default_backend(cfg.device)
    cached = l2c_compile.compile(model, plan, sched, device=cfg.device, backend=backend, model_info=info)
    full = l2c_compile.compile(model, plan, None, device=cfg.device, backend=backend, model_info=info)
    stages["compile"] = time.perf_counter() - t0
    share = f" (this rank's {len(mine)} of {cfg.samples})" if world > 1 else ""
    calls = -(-len(mine) // max(batch, 1)) * plan.nfe  # every batch runs the whole plan
    progress(f"sampling {cfg.samples} images, uncached{share}")
    with (
        bars.task(f"{len(mine)} images, uncached", calls, "model calls"),
        bars.counting_model_calls(full),
    ):
        ref = draw(full, noise, labels, scale, batch, workers)
    progress(f"sampling {cfg.samples} images with the schedule{share}")
    with (
        bars.task(f"{len(mine)} images, schedule", calls, "model calls"),
        bars.counting_model_calls(cached),
    ):
        got = draw(cached, noise, labels, scale, batch, workers)
    stages["sample_full"], stages["sample_cached"] = ref.seconds, got.seconds
    progress("scoring")
    t0 = time.perf_counter()
    group = _metric_group()
    scores = {}
    for name, images, twins in (("cached", got.images, ref.images), ("full", ref.images, None)):
        metric = SampleQuality(distributed=world > 1, process_group=group)
        metric.update(images, labels, twins)
        scores[name] = {k: float(v) for k, v in metric.compute().items()}
    stages["score"] = time.perf_counter() - t0

    summary = schedule_summary(sched)
    stats = sched.stats()
    return {
        "model": spec.name,
        "sampler": plan.sampler,
        "nfe": plan.nfe,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "cfg_scale": scale,
        "batch": batch,
        "workers": got.workers,
        "backend": backend,
        "world_size": world,
        "schedule": {"mode": sched.mode, "threshold": sched.threshold, "source": sched.source},
        **scores["cached"],
        **{f"{k}_full": v for k, v in scores["full"].items()},
        "macs_cached": summary["macs_cached"],
        "macs_full": summary["macs_full"],
        "removed": stats["skipped_total"],
        "removable": stats["total_cache_sublayers"],
        "latency_per_image_s": got.seconds_per_image,
        "latency_per_image_full_s": ref.seconds_per_image,
        "images_per_second": got.images_per_second,
        "images_per_second_full": ref.images_per_second,
        "speedup": ref.seconds_per_image / got.seconds_per_image,
        "ideal_speedup": summary["macs_full"] / summary["macs_cached"],
        "timing_note": timing_note(
            ref.seconds_per_image / got.seconds_per_image,
            summary["macs_full"] / summary["macs_cached"],
        ),
        "metric_names": metric_names,
        "stage_seconds": stages,
        "machine": machine(cfg.device),
    }


def machine(device: str = "cpu") -> dict[str, Any]:
    """Where the latency was measured (device, CPU model, threads, torch)."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:  # platform gives only the architecture on Linux; the model name is in /proc/cpuinfo
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if str(device).startswith("cuda"):
        device = torch.cuda.get_device_name(torch.device(device))
    return {
        "device": str(device),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
