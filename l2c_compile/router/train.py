"""Router training: the paper's Algorithm 1 and its learning-to-drop baseline (spec §2, §3).

Generic over the SamplerPlan rather than written per model. One iteration, for each shard of the
global batch:

1. draw one cache call m of the plan (router row r = ``call.router_index``), x0 and labels, noise
   and a CFG label-dropout mask (p = 0.1, the same mask for every pass below);
2. noise x0 to the state at the start of the solver step holding call m−1, run that step's calls
   up to m−1 with full compute while recording the cache (no grad), and apply the plan's
   combinations to get call m's input x_m — for DDIM one full step from the odd index to the even
   one, for DPM-Solver-2 one step whose midpoint leaves its features in the cache;
3. teacher: full compute at m; student: every sublayer blends ``w·fresh + (1−w)·cached``
   (``mode="drop"``: ``w·fresh``) with w = sigmoid(logits[r]); neither records;
4. loss = distance(teacher, student) over the raw output (all channels, no CFG) + λ·Σ sigmoid
   (λ of row r: see ``lam_schedule`` below).

``objective="trajectory"`` (after HarmoniCa, :func:`~l2c_compile.router.objective.trajectory_loss`)
replaces steps 2–4: each shard samples the whole plan from its noise, uncached (teacher) and with
every cache call blended (student), and the loss is distance(final samples) + λ·(Σ sigmoid over
the trained rows) / (number of trained rows), so λ keeps its per-row meaning. It reads labels
only (no x0, no label dropout), guides with ``cfg_scale`` as sampling does, and costs about three
sampler runs per shard and iteration.

``lam_schedule`` spreads λ over the cache steps in sampling order (i = 0 … R−1 of R trained rows):
``"constant"`` (the paper: λ everywhere), ``"rising"`` (λ·2i/(R−1): caching is pushed towards the
last, least noisy steps) or ``"falling"`` (λ·2(R−1−i)/(R−1): towards the first). Both ramps keep
the mean over rows at λ; how much a run removes still changes with the ramp, since steps differ in
how much they can reuse (DiT-FMNIST DDIM-20, λ 3e-5: 44 of 120 constant, 14 rising, 48 falling).

Recipe ``"dit"``: mean squared error, logits clamped to [−5, 5] after each step, θ = 0.1.
Recipe ``"uvit"``: per-sample sum of squares, no clamp, θ = 0.9. AdamW, weight decay 0.

Every random draw of an iteration comes from generators seeded by (seed, step, shard), and the
data order from per-epoch permutations seeded by (seed, epoch). So ``--resume`` is exact, and one
process with ``shards=k`` equals DDP over k ranks with the same global batch: each rank (or shard)
draws its own cache call, and gradients are averaged over shards — what DDP's all-reduce does.
Each trainable row is its own parameter, so a row no shard drew keeps grad None and AdamW leaves
it (and its step count) alone, like the official per-router ``ModuleList``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from l2c_compile.compiler.reference import CacheState, instrument
from l2c_compile.errors import L2CError, suggest
from l2c_compile.families import FAMILIES, Recipe, family_of, recipes
from l2c_compile.families.vocabulary import MODES
from l2c_compile.router.checkpoint import (
    checkpoint_path,
    checkpoint_step,
    load_checkpoint,
    save_checkpoint,
)
from l2c_compile.router.data import LabelData, TrainData
from l2c_compile.router.objective import (
    CacheTarget,
    RouterLogits,
    cache_targets,
    initial_logits,
    mixing_weights,
    shard_loss,
    trajectory_loss,
)
from l2c_compile.runtime import features
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule.router_files import router_layout_meta, save_router

# Each family's recipe is declared with the family (families/builtin.py); this is the index by name.
RECIPES: dict[str, Recipe] = recipes()
OBJECTIVES = ("step", "trajectory")  # Algorithm 1's one-step target | the final sample (HarmoniCa)
LAM_SCHEDULES = ("constant", "rising", "falling")  # λ over the cache steps, in sampling order


def _check_lam_schedule(schedule: object) -> None:
    _check(
        schedule in LAM_SCHEDULES,
        f"unknown λ schedule {schedule!r}{suggest(str(schedule), list(LAM_SCHEDULES))}; "
        "choose constant, rising or falling",
    )


def lam_per_row(lam: float, schedule: str, rows: list[int]) -> dict[int, float]:
    """λ of each router row; ``rows`` in sampling order (the first is the noisiest cache step).

    ``"constant"``: λ for every row (paper eq. 6). ``"rising"``: λ·2i/(R−1), 0 at the first cache
    step and 2λ at the last; ``"falling"``: the reverse. The ramps' mean over rows is λ; a single
    row gets λ whatever the schedule. Raises L2CError on an unknown schedule.
    """
    _check_lam_schedule(schedule)
    n = len(rows)
    if schedule == "constant" or n == 1:
        return dict.fromkeys(rows, lam)
    ramp = [2 * i / (n - 1) for i in range(n)]
    if schedule == "falling":
        ramp.reverse()
    return {r: lam * w for r, w in zip(rows, ramp, strict=True)}


def default_recipe(family: str) -> str:
    """The recipe of a model family (``"dit"`` or ``"uvit"``; a family without its own, e.g. a
    diffusers DiT or PixArt, takes the recipe of the family whose routers apply to it, else DiT's)."""
    fam = FAMILIES.get(family)
    if fam is not None and fam.recipe is None and fam.own_router_family in FAMILIES:
        fam = FAMILIES[fam.own_router_family]
    return fam.recipe.name if fam is not None and fam.recipe is not None else "dit"


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise L2CError(msg)


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of a router training run (validated on construction)."""

    lam: float  # λ: weight of Σ sigmoid(logits) in the loss
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 64  # global batch, split evenly over shards
    seed: int = 0
    recipe: str = "dit"
    mode: str = "cache"  # "cache" (L2C) | "drop" (learning-to-drop baseline)
    threshold: float | None = None  # θ for the reported skip ratio (None: the recipe's)
    ste_threshold: float | None = None  # straight-through hard mask w = 1[σ > thr] (paper's STE)
    label_dropout: float = 0.1
    shards: int | None = None  # None: the torch.distributed world size
    checkpoint_every: int = 1000  # 0: only at the end
    objective: str = "step"  # "step" (Algorithm 1) | "trajectory" (final sample, after HarmoniCa)
    cfg_scale: float | None = None  # CFG of the trajectory objective's sampling (None: none)
    lam_schedule: str = "constant"  # λ over the cache steps: "constant" | "rising" | "falling"

    def __post_init__(self) -> None:
        _check(
            self.recipe in RECIPES,
            f"unknown recipe {self.recipe!r}{suggest(str(self.recipe), list(RECIPES))}; choose dit or uvit",
        )
        _check(
            self.mode in MODES,
            f"unknown mode {self.mode!r}{suggest(str(self.mode), MODES)}; choose cache or drop",
        )
        _check(_is_num(self.lam) and self.lam >= 0, f"lam must be a number >= 0, got {self.lam!r}")
        _check(_is_num(self.lr) and self.lr > 0, f"lr must be a number > 0, got {self.lr!r}")
        _check(
            _is_int(self.steps) and self.steps >= 1,
            f"steps must be an integer >= 1, got {self.steps!r}",
        )
        _check(
            _is_int(self.batch_size) and self.batch_size >= 1,
            f"batch size must be an integer >= 1, got {self.batch_size!r}",
        )
        _check(
            _is_int(self.seed) and self.seed >= 0,
            f"seed must be an integer >= 0, got {self.seed!r}",
        )
        for name in ("threshold", "ste_threshold"):
            v = getattr(self, name)
            _check(
                v is None or (_is_num(v) and 0 <= v <= 1), f"{name} must be in [0, 1], got {v!r}"
            )
        _check(
            _is_num(self.label_dropout) and 0 <= self.label_dropout < 1,
            f"label dropout must be in [0, 1), got {self.label_dropout!r}",
        )
        _check(
            self.shards is None or (_is_int(self.shards) and self.shards >= 1),
            f"shards must be an integer >= 1, got {self.shards!r}",
        )
        _check(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            f"checkpoint interval must be an integer >= 0, got {self.checkpoint_every!r}",
        )
        _check(
            self.objective in OBJECTIVES,
            f"unknown objective {self.objective!r}{suggest(str(self.objective), list(OBJECTIVES))}; "
            "choose step or trajectory",
        )
        _check(
            self.cfg_scale is None or _is_num(self.cfg_scale),
            f"cfg scale must be a number, got {self.cfg_scale!r}",
        )
        _check(
            self.cfg_scale is None or self.objective == "trajectory",
            "a CFG scale only applies to the trajectory objective (the step objective trains unguided)",
        )
        _check_lam_schedule(self.lam_schedule)

    @property
    def theta(self) -> float:
        """θ in effect: the given threshold, else the recipe's."""
        return RECIPES[self.recipe].threshold if self.threshold is None else float(self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields (for checkpoints and router metadata)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    logits: torch.Tensor  # (nfe, K·depth) float32, the official layout for K = 2 kinds
    history: list[dict[str, float]]  # per step: step, loss, distance, reg, skip
    path: Path | None  # the router file written (None when no output was asked for)
    trained_rows: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    resumed_from: int = 0  # step the run continued from (0: a fresh run)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: nothing half-written, the last checkpoint left as it was."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted after step {step}")
        self.step = step
        self.checkpoint = checkpoint

    @property
    def note(self) -> str:
        """What the interrupt left, for the CLI's "interrupted: …" line."""
        if self.checkpoint is None:
            return "no checkpoint was written yet"
        return f"last checkpoint {self.checkpoint} (step {self.step}) is intact; rerun with --resume"


# ---------------------------------------------------------------------------------------------
# Randomness: everything derived from (seed, step, shard)
# ---------------------------------------------------------------------------------------------


def _generator(*key: int) -> torch.Generator:
    seed = np.random.SeedSequence(list(key)).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


class _Order:
    """The data order: a fresh permutation per epoch, seeded by (seed, epoch)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count)
        out = torch.empty(count, dtype=torch.long)
        for epoch in pos.div(self.n, rounding_mode="floor").unique().tolist():
            if epoch not in self._perms:
                self._perms = {
                    epoch: torch.randperm(self.n, generator=_generator(self.seed, epoch, 0, 2))
                }
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perms[epoch][pos[sel] % self.n]
        return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun: (rank, world size, device).

    NCCL with one GPU per local rank when CUDA is available, gloo on the CPU otherwise.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, torch.device("cuda" if features.has("cuda") else "cpu")
    use_cuda = features.has("cuda")
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def _check_inputs(model: nn.Module, data: TrainData, config: TrainConfig, shards: int) -> None:
    _, world = _dist_info()
    if shards % world:
        raise L2CError(f"{shards} shards cannot be split over {world} processes")
    if config.batch_size % shards:
        raise L2CError(f"batch size {config.batch_size} is not divisible by {shards} shards")
    # The step objective drops labels for CFG; the trajectory objective guides with the null one.
    step = config.objective == "step"
    needs_null = config.label_dropout > 0 if step else config.cfg_scale is not None
    what = "label dropout" if step else "CFG"
    embed = getattr(getattr(model, "y_embedder", None), "embedding_table", None)
    if needs_null and embed is not None and embed.num_embeddings <= model.null_class:
        raise L2CError(f"{what} needs the model's null class, which this model lacks")
    if needs_null and hasattr(model, "null_condition") and model.null_condition is None:
        raise L2CError(
            f"{what} needs the empty prompt's condition: give negative_prompt_embeds with the "
            "prompt embeddings, or " + ("set label dropout to 0" if step else "train without CFG")
        )
    if len(data) == 0:
        raise L2CError("the training data is empty")
    if step and isinstance(data, LabelData):
        raise L2CError("labels-only data trains the trajectory objective only (the step target needs x0)")


@dataclass
class _Run:
    """Everything an iteration needs, fixed for the whole run."""

    model: nn.Module
    state: CacheState
    data: TrainData
    config: TrainConfig
    plan: SamplerPlan
    targets: tuple[CacheTarget, ...]
    order: _Order
    shards: int
    local: range  # the shards this process computes
    device: torch.device
    lam: dict[int, float]  # λ of each trained row (``lam_per_row``)


def train(
    model: nn.Module,
    plan: SamplerPlan,
    data: TrainData,
    config: TrainConfig,
    *,
    model_name: str | None = None,
    output: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainResult:
    """Train a router for (``model``, ``plan``) on ``data``; write ``output`` (+ ``.ckpt``) on rank 0.

    The model is frozen (``requires_grad_(False)``). Under torch.distributed every rank runs its
    share of the shards and the router parameters are wrapped in DistributedDataParallel.
    Ctrl-C raises :class:`TrainingInterrupted` and leaves the last checkpoint as it was.
    """
    rank, world = _dist_info()
    shards = config.shards or world
    _check_inputs(model, data, config, shards)
    if resume and output is None:
        raise L2CError("resuming needs the output path whose checkpoint it continues")
    name = model_name or getattr(model, "model_name", type(model).__name__)
    model.requires_grad_(False).eval()
    device = next(model.parameters()).device
    depth = len(model.transformer_blocks())
    targets = cache_targets(plan)
    rows = tuple(sorted(t.row for t in targets))
    if rows[-1] >= plan.nfe:
        raise L2CError(f"router row {rows[-1]} is outside a table of {plan.nfe} rows")
    layout = family_of(model).layout(model)  # one logit per (row, block, kind): layout.width per row
    router = RouterLogits(initial_logits(plan.nfe, layout.width, config.seed, 1), rows).to(device)
    optimizer = torch.optim.AdamW(
        [router.rows[str(r)] for r in rows], lr=config.lr, weight_decay=0.0
    )
    run_info = {
        "model": name,
        "sampler": plan.sampler,
        "nfe": plan.nfe,
        "options": dict(plan.options),
        "data": getattr(data, "description", type(data).__name__),
        "shards": shards,  # the effective split: resuming under another world size would differ
    }
    ckpt = checkpoint_path(output) if output is not None else None
    start, history = 0, []
    if resume:
        start, history = load_checkpoint(ckpt, router, optimizer, config.to_dict(), run_info)
    forward: nn.Module = router
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # One parameter per row: rows no rank drew stay without a gradient, so AdamW skips them.
        forward = DistributedDataParallel(
            router,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    bar = _Bar(progress and rank == 0, config.steps, start)
    try:
        with instrument(model) as state:
            local = range(rank * shards // world, (rank + 1) * shards // world)
            run = _Run(
                model,
                state,
                data,
                config,
                plan,
                targets,
                _Order(len(data), config.seed),
                shards,
                local,
                device,
                lam_per_row(config.lam, config.lam_schedule, [t.row for t in targets]),
            )
            for step in range(start, config.steps):
                distance, reg = _iteration(run, step, forward, optimizer)
                if RECIPES[config.recipe].clamp is not None:
                    router.clamp_(RECIPES[config.recipe].clamp)
                skip = _skip_ratio(router, rows, config.theta)
                row = {
                    "step": step + 1,
                    "loss": distance + reg,
                    "distance": distance,
                    "reg": reg,
                    "skip": skip,
                }
                history.append(row)
                bar.update(row)
                done = step + 1
                every = config.checkpoint_every
                if rank == 0 and ckpt and every and done % every == 0 and done < config.steps:
                    save_checkpoint(
                        ckpt, done, router, optimizer, config.to_dict(), run_info, history
                    )
    except KeyboardInterrupt:
        bar.close()
        last = checkpoint_step(ckpt)
        raise TrainingInterrupted(last or 0, ckpt if last is not None else None) from None
    finally:
        bar.close()

    logits = router.logits()
    meta = {
        **run_info,
        **{k: v for k, v in config.to_dict().items() if k not in ("threshold", "shards")},
        "threshold": config.theta,
        "trained_rows": list(rows),
        "depth": depth,
    }
    meta.update(router_layout_meta(layout))  # two-kind routers keep the metadata they always had
    path = Path(output) if output is not None else None
    if path is not None:
        if rank == 0:
            final = max(start, config.steps)
            save_checkpoint(ckpt, final, router, optimizer, config.to_dict(), run_info, history)
            save_router(path, logits, meta)
        if world > 1:
            dist.barrier()  # nobody reads the files before rank 0 has written them
    return TrainResult(logits, history, path, rows, meta, start)


def _iteration(
    run: _Run, step: int, forward: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[float, float]:
    """One optimizer step over this process's shards; (distance, λ·Σ scores) averaged over all."""
    cfg = run.config
    optimizer.zero_grad(set_to_none=True)
    draws = [_draw_shard(run, step, k) for k in run.local]
    trajectory = cfg.objective == "trajectory"
    rows = sorted({t.row for t in run.targets})
    needed = rows if trajectory else sorted({d[0].row for d in draws})
    # One forward of the (DDP-wrapped) router per iteration, as DDP expects.
    scores = dict(zip(needed, forward(needed), strict=True))
    total = torch.zeros((), device=run.device)
    sums = torch.zeros(2, dtype=torch.float64)  # Σ distance, Σ λ·l1 over this process's shards
    for target, x0, noise, y in draws:
        if trajectory:
            weights = {r: mixing_weights(scores[r], cfg.ste_threshold) for r in rows}
            distance = trajectory_loss(
                run.model,
                run.state,
                run.plan,
                noise.to(run.device),
                y.to(run.device),
                weights,
                distance=RECIPES[cfg.recipe].distance,
                mode=cfg.mode,
                cfg_scale=cfg.cfg_scale,
            )
            reg = sum(run.lam[r] * scores[r].sum() for r in rows) / len(rows)
        else:
            s = scores[target.row]  # (K·depth,)
            distance = shard_loss(
                run.model,
                run.state,
                target,
                x0.to(run.device),
                noise.to(run.device),
                y.to(run.device),
                mixing_weights(s, cfg.ste_threshold),
                distance=RECIPES[cfg.recipe].distance,
                mode=cfg.mode,
            )
            reg = run.lam[target.row] * s.sum()
        # Mean over this process's shards; DDP then averages over processes: the mean over all.
        total = total + (distance + reg) / len(run.local)
        sums += torch.tensor([float(distance.detach()), float(reg.detach())], dtype=torch.float64)
    total.backward()
    optimizer.step()
    if dist.is_available() and dist.is_initialized():
        sums = sums.to(run.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    return float(sums[0]) / run.shards, float(sums[1]) / run.shards


def _draw_shard(
    run: _Run, step: int, shard: int
) -> tuple[CacheTarget, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cache target, x0, noise, labels after dropout) of one shard, all from (seed, step, shard)."""
    cfg = run.config
    per_shard = cfg.batch_size // run.shards
    gen = _generator(cfg.seed, step, shard, 0)
    target = run.targets[int(torch.randint(len(run.targets), (1,), generator=gen))]
    indices = run.order.indices(step * cfg.batch_size + shard * per_shard, per_shard)
    x0, y = run.data.batch(indices, _generator(cfg.seed, step, shard, 1))  # (b, C, H, W), (b,)
    noise = torch.randn(x0.shape, generator=gen)  # (b, C, H, W)
    drop = torch.rand(per_shard, generator=gen) < cfg.label_dropout  # (b,)
    if cfg.label_dropout > 0 and cfg.objective == "step":  # the trajectory samples as inference does
        y = run.model.drop_labels(y, drop)
    return target, x0, noise, y


def _skip_ratio(router: RouterLogits, rows: tuple[int, ...], theta: float) -> float:
    with torch.no_grad():
        scores = torch.stack([torch.sigmoid(router.rows[str(r)].float()) for r in rows])
        return float((scores <= theta).float().mean())  # the share of (row, sublayer) reused


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar showing loss, regularizer and skip ratio (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.progress = None
        if not enabled:
            return
        from rich.progress import Progress, TextColumn

        from l2c_compile.progress import bar_columns

        # The shared columns (steps done / total, rate, elapsed, time left), then the losses.
        self.progress = Progress(
            *bar_columns("steps"),
            TextColumn(
                "loss {task.fields[loss]}  reg {task.fields[reg]}  skip {task.fields[skip]}"
            ),
        )
        self.task = self.progress.add_task(
            "training router",
            total=total,
            completed=done,
            unit="steps",
            loss="-",
            reg="-",
            skip="-",
        )
        self.progress.start()

    def update(self, row: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(
                self.task,
                advance=1,
                loss=f"{row['loss']:.4g}",
                reg=f"{row['reg']:.3g}",
                skip=f"{row['skip']:.1%}",
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
