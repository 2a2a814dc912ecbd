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
4. loss = distance(teacher, student) over the raw output (all channels, no CFG) + λ·Σ sigmoid.

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

from l2c_compile.errors import L2CError, suggest
from l2c_compile.io import atomic_path
from l2c_compile.reference import CacheState, instrument
from l2c_compile.router.data import TrainData
from l2c_compile.routers import save_router
from l2c_compile.samplers.base import ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.schedules import alpha_bar_at

MODES = ("cache", "drop")
CHECKPOINT_FORMAT = "l2c-router-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    """How the official code of one model family trains its router."""

    name: str
    distance: str  # "mean": MSE over C·H·W (DiT); "sum": sum of squares per sample (U-ViT)
    clamp: float | None  # logits clamped to [−c, c] after each step
    threshold: float  # θ used at inference, for the reported skip ratio
    lam: float  # the README's λ


RECIPES: dict[str, Recipe] = {
    "dit": Recipe("dit", "mean", 5.0, 0.1, 5e-6),
    "uvit": Recipe("uvit", "sum", None, 0.9, 0.1),
}


def default_recipe(family: str) -> str:
    """The recipe of a model family (``"dit"`` or ``"uvit"``)."""
    return "uvit" if family == "uvit" else "dit"


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

    def __post_init__(self) -> None:
        _check(self.recipe in RECIPES, f"unknown recipe {self.recipe!r}{suggest(str(self.recipe), list(RECIPES))}; choose dit or uvit")
        _check(self.mode in MODES, f"unknown mode {self.mode!r}{suggest(str(self.mode), MODES)}; choose cache or drop")
        _check(_is_num(self.lam) and self.lam >= 0, f"lam must be a number >= 0, got {self.lam!r}")
        _check(_is_num(self.lr) and self.lr > 0, f"lr must be a number > 0, got {self.lr!r}")
        _check(_is_int(self.steps) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}")
        _check(_is_int(self.batch_size) and self.batch_size >= 1, f"batch size must be an integer >= 1, got {self.batch_size!r}")
        _check(_is_int(self.seed) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        for name in ("threshold", "ste_threshold"):
            v = getattr(self, name)
            _check(v is None or (_is_num(v) and 0 <= v <= 1), f"{name} must be in [0, 1], got {v!r}")
        _check(_is_num(self.label_dropout) and 0 <= self.label_dropout < 1, f"label dropout must be in [0, 1), got {self.label_dropout!r}")
        _check(self.shards is None or (_is_int(self.shards) and self.shards >= 1), f"shards must be an integer >= 1, got {self.shards!r}")
        _check(_is_int(self.checkpoint_every) and self.checkpoint_every >= 0, f"checkpoint interval must be an integer >= 0, got {self.checkpoint_every!r}")

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

    logits: torch.Tensor  # (nfe, 2·depth) float32, the official layout
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


# ---------------------------------------------------------------------------------------------
# What one cache call needs: the warm-up calls before it and the noise level they start from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheTarget:
    """A trainable cache call and the solver step that fills the cache it reads."""

    call: ModelCall  # the cache call m
    step: SolverStep  # the solver step holding call m−1
    warm: tuple[ModelCall, ...]  # that step's calls up to m−1 (full compute, recording)
    crosses_step: bool  # m is the first call of the next step: apply the step update first
    alpha_bar: float  # ᾱ at the start of ``step``

    @property
    def row(self) -> int:
        """The router row the cache call reads."""
        return int(self.call.router_index)  # type: ignore[arg-type]


def cache_targets(plan: SamplerPlan) -> tuple[CacheTarget, ...]:
    """Every cache call of ``plan`` with its warm-up, in sampling order."""
    owner: dict[int, SolverStep] = {c.index: s for s in plan.steps for c in s.calls}
    targets = []
    for call in plan.calls:
        if call.role != "cache":
            continue
        if call.index == 0 or call.router_index is None:
            raise L2CError(f"{plan.sampler} plan: cache call {call.index} has no earlier call to fill its cache")
        step = owner[call.index - 1]
        warm = tuple(c for c in step.calls if c.index < call.index)
        start = step.calls[0].timestep
        ab = alpha_bar_at(start, plan.noise_schedule, plan.time_input)
        targets.append(CacheTarget(call, step, warm, owner[call.index] is not step, ab))
    if not targets:
        raise L2CError(f"the {plan.sampler} plan with {plan.nfe} NFE has no cache steps: nothing to train")
    rows = [t.row for t in targets]
    if len(set(rows)) != len(rows):
        raise L2CError(f"{plan.sampler} plan: several cache calls share a router row; cannot train it")
    return tuple(targets)


# ---------------------------------------------------------------------------------------------
# The trainable logits
# ---------------------------------------------------------------------------------------------


class RouterLogits(nn.Module):
    """The router table; only the trained rows are parameters (one each, like the official code)."""

    def __init__(self, init: torch.Tensor, rows: tuple[int, ...]) -> None:
        super().__init__()
        self.table = init.detach().clone()  # (nfe, 2·depth): untrained rows stay as initialised
        self.rows = nn.ParameterDict({str(r): nn.Parameter(init[r].detach().clone()) for r in rows})

    def forward(self, rows: list[int]) -> tuple[torch.Tensor, ...]:
        """Scores sigmoid(logits) of ``rows``, each (2·depth,)."""
        return tuple(torch.sigmoid(self.rows[str(r)]) for r in rows)

    def logits(self) -> torch.Tensor:
        """The full table (nfe, 2·depth) with the current trained rows, detached, on the CPU."""
        out = self.table.clone()
        for r, p in self.rows.items():
            out[int(r)] = p.detach().cpu()
        return out

    @torch.no_grad()
    def clamp_(self, bound: float) -> None:
        """Clamp every trained logit to [−bound, bound]."""
        for p in self.rows.values():
            p.clamp_(-bound, bound)


def initial_logits(nfe: int, depth: int, seed: int) -> torch.Tensor:
    """Standard-normal logits from the seed, like the official ``Router`` init (all rows)."""
    return torch.randn(nfe, 2 * depth, generator=torch.Generator().manual_seed(seed))


def mixing_weights(scores: torch.Tensor, ste_threshold: float | None) -> torch.Tensor:
    """Fresh-compute weights w: the scores, or the STE hard mask (forward 1[σ > thr], grad identity)."""
    if ste_threshold is None:
        return scores
    hard = (scores > ste_threshold).to(scores.dtype)
    return hard + scores - scores.detach()


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
                self._perms = {epoch: torch.randperm(self.n, generator=_generator(self.seed, epoch, 0, 2))}
            sel = pos.div(self.n, rounding_mode="floor") == epoch
            out[sel] = self._perms[epoch][pos[sel] % self.n]
        return out


# ---------------------------------------------------------------------------------------------
# One shard of one iteration
# ---------------------------------------------------------------------------------------------


def _model_call(model: nn.Module, call: ModelCall, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    t = torch.full((x.shape[0],), float(call.timestep), dtype=torch.float32, device=x.device)
    return model(x.to(dtype), t, y)  # (B, C_out, H, W) raw output, all channels


def shard_loss(
    model: nn.Module,
    state: CacheState,
    target: CacheTarget,
    x0: torch.Tensor,
    noise: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    *,
    distance: str,
    mode: str,
) -> torch.Tensor:
    """distance(teacher, student) at ``target``'s cache call; ``weights``: (2·depth,) fresh weights."""
    ab = target.alpha_bar
    x = math.sqrt(ab) * x0 + math.sqrt(1.0 - ab) * noise  # (B, C, H, W) state at the step start
    with torch.no_grad():
        state.clear()
        eps: dict[int, torch.Tensor] = {}
        for call in target.warm:
            state.set_call(record=True)
            out = _model_call(model, call, call.input.apply(x, eps), labels)
            eps[call.index] = model.eps(out).to(x.dtype)  # (B, C, H, W)
        if target.crosses_step:
            x, eps = target.step.update.apply(x, eps), {}
        x_m = target.call.input.apply(x, eps)  # (B, C, H, W) input of the cache call
        state.set_call(record=False)
        teacher = _model_call(model, target.call, x_m, labels)  # (B, C_out, H, W)
    state.set_call(record=False)
    state.mode = mode
    w = weights.to(teacher.dtype)
    state.weights = {(kind, i): w[2 * i + j] for i in range(w.shape[0] // 2) for j, kind in enumerate(("attn", "mlp"))}
    student = _model_call(model, target.call, x_m, labels)  # (B, C_out, H, W)
    state.weights = None
    sq = (student.float() - teacher.float()).pow(2).flatten(1)  # (B, C_out·H·W)
    per_sample = sq.mean(dim=1) if distance == "mean" else sq.sum(dim=1)  # (B,)
    return per_sample.mean()


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def checkpoint_path(output: str | os.PathLike[str]) -> Path:
    """Where the resumable checkpoint of router file ``output`` lives: ``output + ".ckpt"``."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the torchrun process group if launched by torchrun: (rank, world size, device).

    NCCL with one GPU per local rank when CUDA is available, gloo on the CPU otherwise.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) <= 1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return rank, world, device


def _check_model(model: nn.Module, data: TrainData, config: TrainConfig) -> None:
    embed = getattr(getattr(model, "y_embedder", None), "embedding_table", None)
    if config.label_dropout > 0 and embed is not None and embed.num_embeddings <= model.null_class:
        raise L2CError("label dropout needs the model's null class, but it was built without one (class_dropout_prob = 0)")
    if len(data) == 0:
        raise L2CError("the training data is empty")


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
    """
    rank, world = _dist_info()
    shards = config.shards or world
    if shards % world:
        raise L2CError(f"{shards} shards cannot be split over {world} processes")
    if config.batch_size % shards:
        raise L2CError(f"batch size {config.batch_size} is not divisible by {shards} shards")
    if resume and output is None:
        raise L2CError("--resume needs the output path whose checkpoint it continues")
    _check_model(model, data, config)
    recipe = RECIPES[config.recipe]
    name = model_name or getattr(model, "model_name", type(model).__name__)
    model.requires_grad_(False).eval()
    device = next(model.parameters()).device
    depth = len(model.transformer_blocks())
    targets = cache_targets(plan)
    rows = tuple(sorted(t.row for t in targets))
    if max(rows) >= plan.nfe:
        raise L2CError(f"router row {max(rows)} is outside a table of {plan.nfe} rows")

    router = RouterLogits(initial_logits(plan.nfe, depth, config.seed), rows).to(device)
    params = [router.rows[str(r)] for r in rows]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    run = {"model": name, "sampler": plan.sampler, "nfe": plan.nfe, "options": dict(plan.options),
           "data": getattr(data, "description", type(data).__name__)}
    ckpt = checkpoint_path(output) if output is not None else None
    history: list[dict[str, float]] = []
    start = 0
    if resume:
        start, history = _load_checkpoint(ckpt, router, optimizer, config, run)
    forward = router
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(router, device_ids=[device] if device.type == "cuda" else None,
                                          find_unused_parameters=True)

    per_shard = config.batch_size // shards
    local = range(rank * shards // world, (rank + 1) * shards // world)
    order = _Order(len(data), config.seed)
    theta = config.theta
    bar = _Bar(progress and rank == 0, config.steps, start)
    step = start
    try:
        with instrument(model) as state:
            for step in range(start, config.steps):
                optimizer.zero_grad(set_to_none=True)
                draws = [_draw_shard(step, k, config, targets, data, order, per_shard, model) for k in local]
                needed = sorted({d[0].row for d in draws})
                scores = dict(zip(needed, forward(needed), strict=True))
                total = torch.zeros((), device=device)
                sums = torch.zeros(2, dtype=torch.float64)  # Σ distance, Σ λ·l1 over local shards
                for target, x0, noise, y in draws:
                    s = scores[target.row]
                    w = mixing_weights(s, config.ste_threshold)
                    dist_k = shard_loss(model, state, target, x0.to(device), noise.to(device), y.to(device), w,
                                        distance=recipe.distance, mode=config.mode)
                    reg_k = config.lam * s.sum()
                    total = total + (dist_k + reg_k) / len(local)
                    sums += torch.tensor([float(dist_k.detach()), float(reg_k.detach())], dtype=torch.float64)
                total.backward()
                optimizer.step()
                if recipe.clamp is not None:
                    router.clamp_(recipe.clamp)
                if world > 1:
                    sums = sums.to(device)
                    dist.all_reduce(sums)
                    sums = sums.cpu()
                distance, reg = (float(v) / shards for v in sums)
                skip = _skip_ratio(router, rows, theta)
                history.append({"step": step + 1, "loss": distance + reg, "distance": distance, "reg": reg, "skip": skip})
                bar.update(history[-1])
                done = step + 1
                if rank == 0 and ckpt is not None and config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                    _save_checkpoint(ckpt, done, router, optimizer, config, run, history)
    except KeyboardInterrupt:
        bar.close()
        last = _checkpoint_step(ckpt)
        raise TrainingInterrupted(last if last is not None else 0, ckpt if last is not None else None) from None
    finally:
        bar.close()

    logits = router.logits()
    meta = {**run, "recipe": config.recipe, "lam": config.lam, "lr": config.lr, "steps": config.steps,
            "batch_size": config.batch_size, "seed": config.seed, "mode": config.mode,
            "threshold": theta, "ste_threshold": config.ste_threshold, "label_dropout": config.label_dropout,
            "shards": shards, "trained_rows": list(rows), "depth": depth}
    path = None
    if output is not None:
        path = Path(output)
        if rank == 0:
            _save_checkpoint(ckpt, max(start, config.steps), router, optimizer, config, run, history)
            save_router(path, logits, meta)
        if world > 1:
            dist.barrier()
    return TrainResult(logits, history, path, rows, meta, start)


def _draw_shard(
    step: int, shard: int, config: TrainConfig, targets: tuple[CacheTarget, ...], data: TrainData,
    order: _Order, per_shard: int, model: nn.Module,
) -> tuple[CacheTarget, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cache target, x0, noise, labels after dropout) of one shard, all from (seed, step, shard)."""
    gen = _generator(config.seed, step, shard, 0)
    target = targets[int(torch.randint(len(targets), (1,), generator=gen))]
    indices = order.indices(step * config.batch_size + shard * per_shard, per_shard)
    x0, y = data.batch(indices, _generator(config.seed, step, shard, 1))  # (b, C, H, W), (b,)
    noise = torch.randn(x0.shape, generator=gen)  # (b, C, H, W)
    drop = torch.rand(per_shard, generator=gen) < config.label_dropout  # (b,)
    if config.label_dropout > 0:
        y = model.drop_labels(y, drop)
    return target, x0, noise, y


def _skip_ratio(router: RouterLogits, rows: tuple[int, ...], theta: float) -> float:
    with torch.no_grad():
        scores = torch.stack([torch.sigmoid(router.rows[str(r)].float()) for r in rows])  # (R, 2·depth)
        return float((scores <= theta).float().mean())


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

_FREE_FIELDS = ("steps", "checkpoint_every")  # may change between a run and its resumption


def _save_checkpoint(path: Path, step: int, router: RouterLogits, optimizer: torch.optim.Optimizer,
                     config: TrainConfig, run: dict[str, Any], history: list[dict[str, float]]) -> None:
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": step,
             "logits": router.logits(), "optimizer": optimizer.state_dict(), "config": config.to_dict(),
             "run": run, "history": history}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad zip/pickle
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise L2CError(f"{path.name}: not a readable training checkpoint ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise L2CError(f"{path.name}: not an l2c-compile training checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise L2CError(f"{path.name}: unsupported checkpoint version {obj.get('version')!r}")
    return obj


def _checkpoint_step(path: Path | None) -> int | None:
    if path is None or not path.is_file():
        return None
    try:
        return int(_read_checkpoint(path)["step"])
    except L2CError:
        return None


def _load_checkpoint(path: Path | None, router: RouterLogits, optimizer: torch.optim.Optimizer,
                     config: TrainConfig, run: dict[str, Any]) -> tuple[int, list[dict[str, float]]]:
    if path is None or not path.is_file():
        raise L2CError(f"nothing to resume: checkpoint {path} not found")
    obj = _read_checkpoint(path)
    saved, now = obj["config"], config.to_dict()
    for key in now:
        if key not in _FREE_FIELDS and saved.get(key) != now[key]:
            raise L2CError(f"{path.name}: checkpoint was made with {key}={saved.get(key)!r}, this run has {now[key]!r}")
    for key in run:
        if obj["run"].get(key) != run[key]:
            raise L2CError(f"{path.name}: checkpoint was made for {key}={obj['run'].get(key)!r}, this run has {run[key]!r}")
    logits = obj["logits"]
    if tuple(logits.shape) != tuple(router.table.shape):
        raise L2CError(f"{path.name}: checkpoint logits have shape {list(logits.shape)}, expected {list(router.table.shape)}")
    with torch.no_grad():
        router.table.copy_(logits)
        for r, p in router.rows.items():
            p.copy_(logits[int(r)])
    optimizer.load_state_dict(obj["optimizer"])
    return int(obj["step"]), list(obj["history"])


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------


class _Bar:
    """A rich progress bar showing loss, regularizer and skip ratio (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("training router"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  reg {task.fields[reg]}  skip {task.fields[skip]}"),
            TimeRemainingColumn(),
        )
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", reg="-", skip="-")
        self.progress.start()

    def update(self, row: dict[str, float]) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=f"{row['loss']:.4g}", reg=f"{row['reg']:.3g}",
                                 skip=f"{row['skip']:.1%}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
