"""Router training (Algorithm 1, learning-to-drop, DDP, resume) and its data sources, on tiny models."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from l2c_compile.compiler.reference import instrument, sample, sample_uncached
from l2c_compile.errors import L2CError
from l2c_compile.models.registry import build_model, get_spec, init_random
from l2c_compile.router import (
    TensorData,
    TrainConfig,
    TrainingInterrupted,
    cache_targets,
    checkpoint_path,
    shard_loss,
    train,
)
from l2c_compile.router.checkpoint import read_checkpoint
from l2c_compile.router.objective import initial_logits, mixing_weights, trajectory_loss
from l2c_compile.router.train import lam_per_row
from l2c_compile.samplers import make_plan
from l2c_compile.samplers.schedules import alphas_cumprod
from l2c_compile.schedule import Schedule, import_router
from l2c_compile.schedule.router_files import load_router

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models are latency-bound: one thread avoids contention on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dit():
    return init_random(build_model("DiT-Tiny"), 0)


@pytest.fixture(scope="module")
def uvit():
    return init_random(build_model("U-ViT-Tiny"), 0)


def random_data(n: int = 32, seed: int = 0, shape=(4, 16, 16)) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, *shape, generator=g).clamp(-1, 1)
    return TensorData(x0, torch.randint(0, 10, (n,), generator=g), "random")


def uvit_plan(nfe: int, **options):
    spec = get_spec("U-ViT-Tiny")
    return make_plan(
        "dpm-solver-2",
        nfe,
        noise_schedule=spec.noise_schedule,
        time_input=spec.time_input,
        **options,
    )


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------
# The generic recipe
# ---------------------------------------------------------------------------------------------


def test_cache_targets_follow_the_plan() -> None:
    ddim = make_plan("ddim", 6)
    targets = cache_targets(ddim)
    assert [t.row for t in targets] == [4, 2, 0]  # the official even router indices
    ac = alphas_cumprod("linear")
    for t in targets:
        assert [c.index for c in t.warm] == [t.call.index - 1] and t.crosses_step
        ab = ac[int(t.warm[0].timestep)]
        assert t.noise_level == pytest.approx((math.sqrt(ab), math.sqrt(1 - ab)), rel=1e-12)

    shifted = cache_targets(uvit_plan(8))
    assert [t.row for t in shifted] == [1, 2, 3]  # U-ViT trains rows 1..K-1
    # The step before s_k runs s_{k-1} and its midpoint: the cache holds the midpoint features.
    assert [[c.index for c in t.warm] for t in shifted] == [[0, 1], [2, 3], [4, 5]]

    unshifted = cache_targets(uvit_plan(8, shifted=False))
    assert [t.call.index for t in unshifted] == [1, 3, 5, 7]
    assert all(not t.crosses_step and len(t.warm) == 1 for t in unshifted)


def test_shard_loss_matches_a_hand_built_ddim_step(dit) -> None:
    plan = make_plan("ddim", 6)
    target = cache_targets(plan)[1]  # cache call at router row 2, after the full call at row 3
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    y = torch.tensor([1, 2, 10])  # 10 = the null class (a dropped label)
    prev, call = plan.calls[target.call.index - 1], target.call
    ab = alphas_cumprod("linear")[int(prev.timestep)]
    x = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise
    step = plan.steps[prev.index]
    t = lambda c: torch.full((3,), c.timestep)  # noqa: E731
    with torch.no_grad(), instrument(dit) as state:
        state.set_call()  # full compute, recording the cache
        eps = dit.eps(dit(x, t(prev), y))
        x_m = step.update.apply(x, {prev.index: eps})
        state.set_call(record=False)
        teacher = dit(x_m, t(call), y)
        state.set_call({"attn": range(3), "mlp": range(3)}, record=False)  # reuse every sublayer
        all_cached = dit(x_m, t(call), y)
        state.clear()
        loss_one = shard_loss(
            dit, state, target, x0, noise, y, torch.ones(6), distance="mean", mode="cache"
        )
        loss_zero = shard_loss(
            dit, state, target, x0, noise, y, torch.zeros(6), distance="mean", mode="cache"
        )
        loss_sum = shard_loss(
            dit, state, target, x0, noise, y, torch.zeros(6), distance="sum", mode="cache"
        )
    assert float(loss_one) == 0.0  # w = 1: the student is the teacher
    want = (all_cached - teacher).pow(2).mean()  # all 8 output channels
    assert float(loss_zero) == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    # The U-ViT recipe: per-sample sum of squares, i.e. C·H·W times the mean.
    assert float(loss_sum) == pytest.approx(float(want) * 8 * 16 * 16, rel=1e-5)


class _Zero(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(h)


def test_drop_mode_removes_the_sublayer(dit) -> None:
    plan = make_plan("ddim", 4)
    target = cache_targets(plan)[0]
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    y = torch.tensor([3, 4])
    with torch.no_grad(), instrument(dit) as state:
        dropped = shard_loss(
            dit, state, target, x0, noise, y, torch.zeros(6), distance="mean", mode="drop"
        )
        cached = shard_loss(
            dit, state, target, x0, noise, y, torch.zeros(6), distance="mean", mode="cache"
        )
    # Reference: the same model with every attn/mlp replaced by zero (layer dropout).
    pruned = copy.deepcopy(dit)
    for b in pruned.transformer_blocks():
        b.attn, b.mlp = _Zero(), _Zero()
    with torch.no_grad(), instrument(dit) as state:
        x = target.noise_level[0] * x0 + target.noise_level[1] * noise
        prev = target.warm[0]
        eps = dit.eps(dit(x, torch.full((2,), prev.timestep), y))
        x_m = target.step.update.apply(x, {prev.index: eps})
        tm = torch.full((2,), target.call.timestep)
        want = (pruned(x_m, tm, y) - dit(x_m, tm, y)).pow(2).mean()
    assert float(dropped) == pytest.approx(float(want), rel=1e-5)
    assert float(dropped) != float(cached)


def test_ste_weights_are_hard_forward_and_identity_backward() -> None:
    scores = torch.tensor([0.05, 0.2, 0.7], requires_grad=True)
    w = mixing_weights(scores, 0.1)
    assert w.tolist() == [0.0, 1.0, 1.0]
    (w * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert scores.grad.tolist() == [1.0, 2.0, 3.0]
    assert mixing_weights(scores, None) is scores


# ---------------------------------------------------------------------------------------------
# Training behaviour
# ---------------------------------------------------------------------------------------------


def _eval_loss(model, plan, data, logits, n: int = 4) -> float:
    """Mean distance over every cache target on fixed draws (cache mode, soft weights)."""
    total = 0.0
    g = torch.Generator().manual_seed(123)
    x0, y = data.items[:n], data.labels[:n]
    noise = torch.randn(x0.shape, generator=g)
    with torch.no_grad(), instrument(model) as state:
        for t in cache_targets(plan):
            w = torch.sigmoid(logits[t.row])
            total += float(
                shard_loss(model, state, t, x0, noise, y, w, distance="mean", mode="cache")
            )
    return total


def test_loss_falls_and_lambda_controls_skipping(dit) -> None:
    plan, data = make_plan("ddim", 4), random_data()
    runs = {
        lam: train(dit, plan, data, TrainConfig(lam=lam, lr=0.2, steps=16, batch_size=4))
        for lam in (0.0, 0.05)
    }
    init = initial_logits(4, 3, seed=0)
    rows = list(runs[0.0].trained_rows)
    assert rows == [0, 2]
    # λ = 0: the router learns to compute; the loss falls and (almost) nothing is skipped.
    keep = runs[0.0]
    assert _eval_loss(dit, plan, data, keep.logits) < 0.5 * _eval_loss(dit, plan, data, init)
    assert keep.history[-1]["skip"] == 0.0 and keep.history[-1]["reg"] == 0.0
    assert torch.sigmoid(keep.logits[rows]).mean() > torch.sigmoid(init[rows]).mean()
    # A larger λ skips more.
    skip = runs[0.05]
    mean_score = {lam: float(torch.sigmoid(r.logits[rows]).mean()) for lam, r in runs.items()}
    assert mean_score[0.05] < mean_score[0.0]
    skipped = {
        lam: float((torch.sigmoid(r.logits[rows]) <= 0.5).float().mean()) for lam, r in runs.items()
    }
    assert skipped[0.05] > skipped[0.0]
    assert skip.history[-1]["reg"] > 0
    # Rows that are not cache calls are never trained: they keep the seeded init.
    for r in (1, 3):
        assert torch.equal(skip.logits[r], init[r])
    # The DiT recipe clamps the logits.
    assert float(skip.logits[rows].abs().max()) <= 5.0


def test_uvit_recipe_trains_rows_1_to_k_minus_1_without_clamp(uvit) -> None:
    plan, data = uvit_plan(8), random_data(16)
    free = train(
        uvit, plan, data, TrainConfig(lam=5.0, lr=2.0, steps=6, batch_size=2, recipe="uvit")
    )
    assert free.trained_rows == (1, 2, 3)
    assert float(free.logits[[1, 2, 3]].abs().max()) > 5.0  # no clamp in the U-ViT recipe
    assert free.meta["threshold"] == 0.9
    clamped = train(
        uvit, plan, data, TrainConfig(lam=5.0, lr=2.0, steps=6, batch_size=2, recipe="dit")
    )
    assert float(clamped.logits[[1, 2, 3]].abs().max()) <= 5.0
    # Learning-to-drop: the same optimisation; its first loss (same draws, same init) is larger.
    drop = train(
        uvit,
        plan,
        data,
        TrainConfig(lam=5.0, lr=2.0, steps=1, batch_size=2, recipe="uvit", mode="drop"),
    )
    assert drop.history[0]["distance"] > free.history[0]["distance"]


def test_ste_training_runs_and_is_recorded(dit, tmp_path: Path) -> None:
    res = train(
        dit,
        make_plan("ddim", 4),
        random_data(),
        TrainConfig(lam=0.01, lr=0.1, steps=3, batch_size=4, ste_threshold=0.5),
        output=tmp_path / "ste.safetensors",
    )
    assert load_router(res.path).meta["ste_threshold"] == 0.5
    assert all(math.isfinite(h["loss"]) for h in res.history)


def test_output_file_imports_and_exports(dit, tmp_path: Path) -> None:
    plan, out = make_plan("ddim", 6), tmp_path / "router.safetensors"
    res = train(
        dit,
        plan,
        random_data(),
        TrainConfig(lam=1e-3, lr=0.05, steps=2, batch_size=4, seed=3),
        model_name="DiT-Tiny",
        output=out,
    )
    router = load_router(out)
    assert torch.equal(router.logits, res.logits) and router.logits.shape == (6, 6)
    meta = router.meta
    assert (
        meta["model"],
        meta["sampler"],
        meta["nfe"],
        meta["recipe"],
        meta["lam"],
        meta["steps"],
    ) == ("DiT-Tiny", "ddim", 6, "dit", 1e-3, 2)
    assert meta["trained_rows"] == [0, 2, 4] and meta["mode"] == "cache"
    sched = import_router(out, plan, model="DiT-Tiny", depth=3, threshold=0.1)
    assert [c.index for c in sched.cache_calls] == [1, 3, 5]
    with pytest.raises(L2CError, match="trained for DiT-Tiny"):
        import_router(out, plan, model="DiT-S/2", depth=3, threshold=0.1)
    assert checkpoint_path(out).is_file()


def test_resume_and_ctrl_c_equal_an_uninterrupted_run(dit, tmp_path: Path) -> None:
    plan, data = make_plan("ddim", 6), random_data()
    cfg = dict(lam=1e-3, lr=0.05, batch_size=4, seed=7)
    whole = train(
        dit, plan, data, TrainConfig(steps=6, **cfg), output=tmp_path / "whole.safetensors"
    )

    # Stop after 3 steps, then continue to 6.
    part = tmp_path / "part.safetensors"
    train(dit, plan, data, TrainConfig(steps=3, **cfg), output=part)
    resumed = train(dit, plan, data, TrainConfig(steps=6, **cfg), output=part, resume=True)
    assert resumed.resumed_from == 3
    assert torch.equal(resumed.logits, whole.logits)
    assert resumed.history == whole.history

    # Ctrl-C in step 5 (0-based 4): the step-4 checkpoint survives, nothing else is written.
    class Interrupting(TensorData):
        def batch(self, indices, generator):
            self.calls += 1
            if self.calls == 5:
                raise KeyboardInterrupt
            return super().batch(indices, generator)

    flaky = Interrupting(data.items, data.labels, data.description)
    flaky.calls = 0
    cut = tmp_path / "cut.safetensors"
    with pytest.raises(TrainingInterrupted) as info:
        train(dit, plan, flaky, TrainConfig(steps=6, checkpoint_every=2, **cfg), output=cut)
    assert info.value.step == 4 and info.value.checkpoint == checkpoint_path(cut)
    assert not cut.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".cut", "cut"))) == [
        "cut.safetensors.ckpt"
    ]
    again = train(
        dit, plan, data, TrainConfig(steps=6, checkpoint_every=2, **cfg), output=cut, resume=True
    )
    assert again.resumed_from == 4 and torch.equal(again.logits, whole.logits)

    with pytest.raises(L2CError, match=r"lam=0\.001, this run has 0\.002") as bad:
        train(
            dit, plan, data, TrainConfig(steps=8, **{**cfg, "lam": 2e-3}), output=part, resume=True
        )
    one_line(bad)
    with pytest.raises(L2CError, match="nothing to resume"):
        train(
            dit,
            plan,
            data,
            TrainConfig(steps=6, **cfg),
            output=tmp_path / "none.safetensors",
            resume=True,
        )


def test_shards_split_the_batch_with_their_own_draws(dit) -> None:
    plan, data = make_plan("ddim", 6), random_data()
    one = train(dit, plan, data, TrainConfig(lam=1e-3, lr=0.05, steps=2, batch_size=4, shards=1))
    two = train(dit, plan, data, TrainConfig(lam=1e-3, lr=0.05, steps=2, batch_size=4, shards=2))
    assert not torch.equal(one.logits, two.logits)  # each shard draws its own cache call
    with pytest.raises(L2CError, match="not divisible by 3 shards"):
        train(dit, plan, data, TrainConfig(lam=0, steps=1, batch_size=4, shards=3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lam": -1.0}, "lam must be"),
        ({"lam": 0.0, "mode": "dorp"}, "did you mean 'drop'"),
        ({"lam": 0.0, "recipe": "vit"}, "unknown recipe"),
        ({"lam": 0.0, "steps": 0}, "steps must be"),
        ({"lam": 0.0, "ste_threshold": 1.5}, "ste_threshold must be in"),
        ({"lam": 0.0, "label_dropout": 1.0}, "label dropout"),
    ],
)
def test_bad_config_is_one_line(kwargs, match) -> None:
    with pytest.raises(L2CError, match=match) as info:
        TrainConfig(**kwargs)
    one_line(info)


# ---------------------------------------------------------------------------------------------
# Command line and DDP
# ---------------------------------------------------------------------------------------------

_CLI = """
import typer
from l2c_compile.cli.train_cmd import train_cmd
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(train_cmd)
app()
"""


def _cli_app():
    import typer

    from l2c_compile.cli.interrupts import wrap_commands
    from l2c_compile.cli.train_cmd import train_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_cmd)
    wrap_commands(app)  # as the real CLI: Ctrl-C is the "interrupted: …" line
    return app


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model",
        "DiT-Tiny",
        "--init",
        "random",
        "--nfe",
        "6",
        "--data",
        str(data),
        "--lam",
        "1e-3",
        "--lr",
        "0.05",
        "--steps",
        "3",
        "--batch-size",
        "4",
        "-o",
        str(out),
        "--format",
        "json",
        *extra,
    ]


def _latents_file(path: Path) -> Path:
    from safetensors.torch import save_file

    d = random_data(16)
    save_file({"latents": d.items, "labels": d.labels}, str(path))
    return path


def test_cli_trains_and_reports_errors_on_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    runner, app = CliRunner(), _cli_app()
    data, out = _latents_file(tmp_path / "d.safetensors"), tmp_path / "r.safetensors"
    res = runner.invoke(app, _args(data, out, "--export-official", str(tmp_path / "r.pt")))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["trained_rows"] == [0, 2, 4] and summary["world_size"] == 1
    assert torch.equal(load_router(tmp_path / "r.pt").logits, load_router(out).logits)

    bad = runner.invoke(app, _args(data, out, "--mode", "dorp"))
    assert bad.exit_code == 2 and "did you mean 'drop'" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    noweights = runner.invoke(app, [a for a in _args(data, out) if a not in ("--init", "random")])
    assert noweights.exit_code == 2 and "--init random" in noweights.output

    def interrupted(*args, **kwargs):
        raise TrainingInterrupted(2, checkpoint_path(out))

    monkeypatch.setattr("l2c_compile.router.train", interrupted)
    stop = runner.invoke(app, _args(data, out))
    assert stop.exit_code == 130 and "step 2" in stop.stderr and "--resume" in stop.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one_process_with_two_shards(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    data = _latents_file(tmp_path / "d.safetensors")
    single = tmp_path / "single.safetensors"
    res = CliRunner().invoke(_cli_app(), _args(data, single, "--shards", "2"))
    assert res.exit_code == 0, res.output
    (tmp_path / "cli.py").write_text(_CLI)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    ddp = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(tmp_path / "cli.py"),
        *_args(data, ddp),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["world_size"] == 2  # only rank 0 prints
    a, b = load_router(single), load_router(ddp)
    assert torch.allclose(a.logits, b.logits, atol=1e-6, rtol=0)
    assert not torch.equal(a.logits, initial_logits(6, 3, 0))
    ck_a = torch.load(checkpoint_path(single), weights_only=True)
    ck_b = torch.load(checkpoint_path(ddp), weights_only=True)
    steps = lambda ck: {k: float(v["step"]) for k, v in ck["optimizer"]["state"].items()}  # noqa: E731
    assert steps(ck_a) == steps(ck_b)  # rows no rank drew were skipped by AdamW in both


# ---------------------------------------------------------------------------------------------
# The trajectory objective (after HarmoniCa): the final sample's error, through every call
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "nfe", "cfg"), [("DiT-Tiny", 6, 4.0), ("U-ViT-Tiny", 8, None)])
def test_hard_weights_give_the_reference_samplers_error(request, name, nfe, cfg) -> None:
    """With 0/1 weights the student is the reference executor under the thresholded schedule, so
    the loss is exactly the distance between that sample and the uncached one."""
    model = request.getfixturevalue("dit" if "DiT" in name else "uvit")
    plan = make_plan("ddim", nfe) if "DiT" in name else uvit_plan(nfe)
    depth = len(model.transformer_blocks())
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 4, 16, 16, generator=g)
    y = torch.tensor([1, 7])
    rows = sorted(t.row for t in cache_targets(plan))
    hard = {r: (torch.rand(2 * depth, generator=g) > 0.5).float() for r in rows}
    logits = torch.zeros(plan.nfe, 2 * depth)
    for r, w in hard.items():
        logits[r] = torch.where(w > 0, 20.0, -20.0)
    sched = Schedule.from_router(logits, plan, model=name, depth=depth, threshold=0.5)
    assert sched.stats()["skipped_total"] > 0
    cached = sample(model, plan, sched, noise, y, cfg)
    uncached = sample_uncached(model, plan, noise, y, cfg)
    want = float((cached - uncached).pow(2).mean())
    assert want > 0
    with torch.no_grad(), instrument(model) as state:
        loss = trajectory_loss(
            model, state, plan, noise, y, hard, distance="mean", mode="cache", cfg_scale=cfg
        )
        ones = {r: torch.ones(2 * depth) for r in rows}
        zero = trajectory_loss(
            model, state, plan, noise, y, ones, distance="sum", mode="cache", cfg_scale=cfg
        )
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(zero) == 0.0  # w = 1 everywhere: the student is the teacher


def test_gradient_reaches_every_cache_row(dit) -> None:
    plan = make_plan("ddim", 6)
    rows = sorted(t.row for t in cache_targets(plan))
    scores = {r: torch.full((6,), 0.5, requires_grad=True) for r in rows}
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with instrument(dit) as state:
        loss = trajectory_loss(
            dit, state, plan, noise, torch.tensor([0, 3]), scores, distance="mean", mode="cache",
            cfg_scale=4.0,
        )
    loss.backward()
    for r in rows:  # every row's choice changes the final sample
        assert scores[r].grad is not None and float(scores[r].grad.abs().sum()) > 0


def test_training_lowers_the_final_error_and_lambda_skips_more(dit) -> None:
    plan, data = make_plan("ddim", 6), random_data()
    runs = {
        lam: train(
            dit,
            plan,
            data,
            TrainConfig(
                lam=lam, lr=0.2, steps=12, batch_size=4, objective="trajectory", cfg_scale=4.0
            ),
        )
        for lam in (0.0, 0.05)
    }
    keep, skip = runs[0.0], runs[0.05]
    assert keep.history[-1]["distance"] < 0.5 * keep.history[0]["distance"]
    assert keep.history[-1]["reg"] == 0.0 and skip.history[-1]["reg"] > 0
    rows = list(keep.trained_rows)
    assert torch.sigmoid(skip.logits[rows]).mean() < torch.sigmoid(keep.logits[rows]).mean()
    assert skip.meta["objective"] == "trajectory" and skip.meta["cfg_scale"] == 4.0


def test_trajectory_resume_is_exact_and_old_checkpoints_still_resume(dit, tmp_path: Path) -> None:
    plan, data = make_plan("ddim", 4), random_data()
    cfg = dict(lam=1e-3, lr=0.05, batch_size=2, objective="trajectory")
    whole = train(dit, plan, data, TrainConfig(steps=4, **cfg), output=tmp_path / "w.safetensors")
    part = tmp_path / "p.safetensors"
    train(dit, plan, data, TrainConfig(steps=2, **cfg), output=part)
    again = train(dit, plan, data, TrainConfig(steps=4, **cfg), output=part, resume=True)
    assert torch.equal(again.logits, whole.logits)
    with pytest.raises(L2CError, match="objective='trajectory', this run has 'step'"):
        train(dit, plan, data, TrainConfig(steps=5, lam=1e-3, lr=0.05, batch_size=2),
              output=part, resume=True)

    # A checkpoint written before the objective existed was a step-objective run: it resumes.
    old = tmp_path / "old.safetensors"
    step_cfg = dict(lam=1e-3, lr=0.05, batch_size=2)
    train(dit, plan, data, TrainConfig(steps=2, **step_cfg), output=old)
    ckpt = checkpoint_path(old)
    obj = read_checkpoint(ckpt)
    for key in ("objective", "cfg_scale", "lam_schedule"):
        del obj["config"][key]
    torch.save(obj, ckpt)
    resumed = train(dit, plan, data, TrainConfig(steps=3, **step_cfg), output=old, resume=True)
    assert resumed.resumed_from == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "trajectroy"}, "did you mean 'trajectory'"),
        ({"cfg_scale": 4.0}, "only applies to the trajectory objective"),
        ({"objective": "trajectory", "cfg_scale": "4"}, "cfg scale must be a number"),
        ({"lam_schedule": "risng"}, "did you mean 'rising'"),
    ],
)
def test_bad_objective_config_is_one_line(kwargs, match) -> None:
    with pytest.raises(L2CError, match=match) as info:
        TrainConfig(lam=0.0, **kwargs)
    assert "\n" not in str(info.value)


def test_cli_trains_a_trajectory_router_with_the_models_cfg(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    app = _cli_app()
    d = random_data(8)
    data = tmp_path / "d.safetensors"
    save_file({"latents": d.items, "labels": d.labels}, str(data))
    out = tmp_path / "r.safetensors"
    base = ["--model", "DiT-Tiny", "--init", "random", "--nfe", "4", "--data", str(data), "--lam",
            "1e-3", "--steps", "2", "--batch-size", "2", "-o", str(out), "--format", "json"]
    runner = CliRunner()
    res = runner.invoke(app, [*base, "--objective", "trajectory"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["objective"] == "trajectory"
    assert summary["cfg_scale"] == get_spec("DiT-Tiny").default_cfg_scale
    bad = runner.invoke(app, [*base, "--cfg-scale", "2"])
    assert bad.exit_code != 0 and "--objective trajectory only" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# λ over the cache steps (lam_schedule)
# ---------------------------------------------------------------------------------------------


def test_lam_ramps_run_in_sampling_order_and_keep_the_mean() -> None:
    rows = [t.row for t in cache_targets(make_plan("ddim", 10))]  # sampling order
    assert rows != sorted(rows)  # DDIM's router rows count down: the order must come from the plan
    assert lam_per_row(0.3, "constant", rows) == dict.fromkeys(rows, 0.3)
    rising, falling = lam_per_row(0.3, "rising", rows), lam_per_row(0.3, "falling", rows)
    assert rising[rows[0]] == 0.0 and rising[rows[-1]] == pytest.approx(0.6)
    assert [falling[r] for r in rows] == [rising[r] for r in reversed(rows)]
    for ramp in (rising, falling):
        assert sum(ramp.values()) / len(rows) == pytest.approx(0.3)
    assert lam_per_row(0.3, "rising", [7]) == {7: 0.3}
    with pytest.raises(L2CError, match="did you mean 'falling'") as info:
        lam_per_row(0.3, "faling", rows)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("objective", ["step", "trajectory"])
def test_a_rising_lambda_moves_skipping_to_the_last_cache_steps(dit, objective) -> None:
    plan, data = make_plan("ddim", 8), random_data()
    order = [t.row for t in cache_targets(plan)]
    first, last = order[: len(order) // 2], order[len(order) // 2 :]
    cfg = dict(lam=0.05, lr=0.2, steps=16, batch_size=4, objective=objective)
    score = {}
    for ramp in ("rising", "falling"):
        run = train(dit, plan, data, TrainConfig(lam_schedule=ramp, **cfg))
        assert run.meta["lam_schedule"] == ramp
        s = torch.sigmoid(run.logits)
        score[ramp] = (float(s[first].mean()), float(s[last].mean()))
    # rising: little reward for skipping early, twice λ late; falling: the reverse.
    assert score["rising"][1] < score["falling"][1]
    assert score["rising"][0] > score["falling"][0]


def test_a_ramp_run_resumes_only_as_that_ramp(dit, tmp_path: Path) -> None:
    plan, data = make_plan("ddim", 4), random_data()
    cfg = dict(lam=1e-3, lr=0.05, batch_size=2, lam_schedule="rising")
    part = tmp_path / "p.safetensors"
    train(dit, plan, data, TrainConfig(steps=2, **cfg), output=part)
    with pytest.raises(L2CError, match="lam_schedule='rising', this run has 'constant'"):
        train(dit, plan, data, TrainConfig(steps=3, lam=1e-3, lr=0.05, batch_size=2),
              output=part, resume=True)
    assert train(dit, plan, data, TrainConfig(steps=3, **cfg), output=part, resume=True).resumed_from == 2


def test_cli_lam_schedule(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    runner, app = CliRunner(), _cli_app()
    data, out = _latents_file(tmp_path / "d.safetensors"), tmp_path / "r.safetensors"
    res = runner.invoke(app, _args(data, out, "--lam-schedule", "falling"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["lam_schedule"] == "falling"
    assert load_router(out).meta["lam_schedule"] == "falling"
    bad = runner.invoke(app, _args(data, out, "--lam-schedule", "ramp"))
    assert bad.exit_code != 0 and "choose constant, rising or falling" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_resume_cannot_shorten_a_run(dit, tmp_path: Path) -> None:
    """A checkpoint past the run's steps is refused: its router would record fewer steps than it saw."""
    plan, data = make_plan("ddim", 4), random_data()
    out = tmp_path / "r.safetensors"
    train(dit, plan, data, TrainConfig(lam=1e-3, steps=3, batch_size=2), output=out)
    with pytest.raises(L2CError, match="checkpoint is at step 3, past this run's 2 steps") as info:
        train(dit, plan, data, TrainConfig(lam=1e-3, steps=2, batch_size=2), output=out, resume=True)
    assert "\n" not in str(info.value)
    again = train(dit, plan, data, TrainConfig(lam=1e-3, steps=3, batch_size=2), output=out, resume=True)
    assert again.resumed_from == 3  # reaching the same step again is fine: nothing to do


def test_trajectory_trains_data_free_on_labels_alone(tmp_path: Path) -> None:
    """--objective trajectory --data self draws labels, not a pool of samples; the step objective
    refuses labels-only data."""
    from typer.testing import CliRunner

    from l2c_compile.router.data import self_labels

    app = _cli_app()
    out = tmp_path / "r.safetensors"
    args = ["--model", "DiT-Tiny", "--init", "random", "--nfe", "4", "--data", "self", "--lam", "1e-3",
            "--steps", "2", "--batch-size", "2", "--pool-size", "6", "-o", str(out), "--format", "json"]
    res = CliRunner().invoke(app, [*args, "--objective", "trajectory"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["data"] == "self (6 labels, seed 0; no samples drawn)"
    spec = get_spec("DiT-Tiny")
    labels = self_labels(spec, size=6, seed=0)
    x0, y = labels.batch(torch.arange(3), torch.Generator())
    assert x0.shape == (3, *spec.latent_shape) and not x0.any() and y.dtype == torch.long
    assert int(y.max()) < spec.num_classes
    with pytest.raises(L2CError, match="labels-only data trains the trajectory objective only"):
        train(init_random(build_model(spec)), make_plan("ddim", 4), labels, TrainConfig(lam=1e-3, steps=1, batch_size=2))
