"""The trajectory objective (after HarmoniCa): the final sample's error, through every call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2c_compile.compiler.reference import instrument, sample, sample_uncached
from l2c_compile.errors import L2CError
from l2c_compile.models.registry import build_model, get_spec, init_random
from l2c_compile.router import TensorData, TrainConfig, checkpoint_path, train
from l2c_compile.router.checkpoint import read_checkpoint
from l2c_compile.router.objective import cache_targets, trajectory_loss
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule


@pytest.fixture(autouse=True, scope="module")
def one_thread():
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


def _random_data(n: int = 32, shape=(4, 16, 16)) -> TensorData:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(n, *shape, generator=g).clamp(-1, 1)
    return TensorData(x0, torch.randint(0, 10, (n,), generator=g), "random")


def _plan(name: str, nfe: int):
    spec = get_spec(name)
    sampler = "ddim" if "DiT" in name else "dpm-solver-2"
    return make_plan(sampler, nfe, noise_schedule=spec.noise_schedule, time_input=spec.time_input)


@pytest.mark.parametrize(("name", "nfe", "cfg"), [("DiT-Tiny", 6, 4.0), ("U-ViT-Tiny", 8, None)])
def test_hard_weights_give_the_reference_samplers_error(request, name, nfe, cfg) -> None:
    """With 0/1 weights the student is the reference executor under the thresholded schedule, so
    the loss is exactly the distance between that sample and the uncached one."""
    model = request.getfixturevalue("dit" if "DiT" in name else "uvit")
    plan = _plan(name, nfe)
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
    plan = _plan("DiT-Tiny", 6)
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
    plan, data = _plan("DiT-Tiny", 6), _random_data()
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


def test_resume_is_exact_and_old_checkpoints_still_resume(dit, tmp_path: Path) -> None:
    plan, data = _plan("DiT-Tiny", 4), _random_data()
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
    for key in ("objective", "cfg_scale"):
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
    ],
)
def test_bad_objective_config_is_one_line(kwargs, match) -> None:
    with pytest.raises(L2CError, match=match) as info:
        TrainConfig(lam=0.0, **kwargs)
    assert "\n" not in str(info.value)


def test_cli_trains_a_trajectory_router_with_the_models_cfg(tmp_path: Path) -> None:
    import json

    import typer
    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from l2c_compile.cli.train_cmd import train_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_cmd)
    d = _random_data(8)
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
