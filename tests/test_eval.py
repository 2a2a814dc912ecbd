"""`l2c-compile eval` and l2c_compile.apps.evaluate on a tiny Fashion-MNIST-shaped stand-in model.

The stand-in has the FMNIST models' image format (1×32×32, 10 classes) but random weights, and
the feature network is a randomly initialised classifier with statistics of random features, so
the tests check the plumbing and the invariants (same seeds, balanced classes, exact all-compute
run) rather than any particular score.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from l2c_compile import progress as bars
from l2c_compile.apps import demo
from l2c_compile.apps.evaluate import (
    DEFAULT_BATCH,
    EvalConfig,
    default_workers,
    draw,
    eval_inputs,
    has_feature_network,
    run_eval,
    shard_indices,
)
from l2c_compile.cli.main import app
from l2c_compile.errors import L2CError
from l2c_compile.fmnist import classifier
from l2c_compile.models import registry
from l2c_compile.schedule import Schedule, heuristic
from tests.fmnist_stand_ins import install_feature_net, install_model, ship_router, use_router_dir
from tests.helpers import random_schedule

NAME = "DiT-FMNIST-stand-in"
NFE = 4
REPO = Path(__file__).resolve().parents[1]
KEYS = (
    "fid",
    "fid_full",
    "precision",
    "recall",
    "class_accuracy",
    "class_accuracy_full",
    "psnr",
    "macs_cached",
    "macs_full",
    "removed",
    "latency_per_image_s",
)
SCORES = (
    "fid",
    "fid_full",
    "precision",
    "precision_full",
    "recall",
    "recall_full",
    "class_accuracy",
    "class_accuracy_full",
    "psnr",
)


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    """A registered FMNIST-shaped DiT (patch 4, 2 blocks) with weights and a shipped router."""
    install_feature_net(tmp_path, monkeypatch)
    spec = install_model(tmp_path, monkeypatch, "DiT-FMNIST", NAME)
    ship_router(use_router_dir(tmp_path, monkeypatch), spec, "ddim", NFE)
    yield spec
    classifier.load_classifier.cache_clear()
    classifier.reference_stats.cache_clear()


def test_eval_inputs_are_balanced_and_seeded():
    noise, labels = eval_inputs(25, (1, 32, 32), 10, seed=3)
    counts = torch.bincount(labels, minlength=10)
    assert noise.shape == (25, 1, 32, 32) and counts.max() - counts.min() <= 1
    again, labels2 = eval_inputs(25, (1, 32, 32), 10, seed=3)
    assert torch.equal(noise, again) and torch.equal(labels, labels2)
    other, _ = eval_inputs(25, (1, 32, 32), 10, seed=4)
    assert not torch.equal(noise, other)
    with pytest.raises(L2CError, match="at least 4 samples"):
        eval_inputs(1, (1, 32, 32), 10, seed=0)


def test_draw_clamps_batches_and_times_them():
    calls = []

    def sampler(noise, labels, scale):
        calls.append((len(noise), scale))
        return noise * 3  # (b, C, H, W), well outside [-1, 1]

    noise = torch.randn(7, 1, 4, 4)
    out = draw(sampler, noise, torch.zeros(7, dtype=torch.long), 2.0, batch=3)
    assert calls == [(3, 2.0), (3, 2.0), (1, 2.0)]
    assert torch.equal(out.images, (noise * 3).clamp(-1, 1))
    assert out.seconds_per_image > 0


class _CountingReporter:
    """A progress reporter that only counts the units advanced."""

    def __init__(self) -> None:
        self.done = 0

    def stage(self, message: str) -> None:
        pass

    def start(self, description: str, total: int | None, unit: str) -> None:
        pass

    def advance(self, n: int) -> None:
        self.done += n

    def finish(self) -> None:
        pass


def test_draw_workers_run_single_threaded_in_order_and_report_progress():
    seen = []

    def sampler(noise, labels, scale):
        # Each batch records the intra-op threads it ran with; one progress unit per batch.
        seen.append((torch.get_num_threads(), torch.is_inference_mode_enabled()))
        bars.advance(1)
        return noise + labels[:, None, None, None] * scale  # (b, C, H, W)

    noise = torch.randn(11, 1, 4, 4) * 0.1
    labels = torch.arange(11) % 3
    threads = torch.get_num_threads()
    reporter = _CountingReporter()
    with bars.reporting(reporter):
        one = draw(sampler, noise, labels, 0.25, batch=11, workers=1)
        three = draw(sampler, noise, labels, 0.25, batch=2, workers=3)
    assert torch.equal(one.images, three.images)  # input order, whatever the workers
    assert reporter.done == 1 + 6  # the workers saw the caller's progress reporter
    assert seen[0] == (threads, True) and all(s == (1, True) for s in seen[1:])
    assert torch.get_num_threads() == threads  # restored after the pool
    assert (one.workers, three.workers) == (1, 3) and three.seconds > 0
    assert three.images_per_second == pytest.approx(11 / three.seconds)
    with pytest.raises(L2CError, match="workers must be >= 1"):
        draw(sampler, noise, labels, 0.25, workers=0)
    assert default_workers("cpu") == max(1, threads) and default_workers("meta") == 1


def test_same_seeds_give_the_same_samples_at_any_batch_and_workers(stand_in):
    """The compiled sampler draws each sample from its own noise: batching cannot change it."""
    import l2c_compile
    from l2c_compile.apps.evaluate import load_model

    model, plan = load_model(stand_in), _plan(stand_in)
    sampler = l2c_compile.compile(model, plan, None, model_info=stand_in.to_dict())
    noise, labels = eval_inputs(13, stand_in.latent_shape, stand_in.num_classes, seed=5)
    scale = stand_in.default_cfg_scale
    first = draw(sampler, noise, labels, scale, batch=13, workers=1).images
    assert first.abs().max() > 0 and first.std() > 0.05
    for batch, workers in ((1, 1), (4, 2), (5, 3), (DEFAULT_BATCH, 2)):
        got = draw(sampler, noise, labels, scale, batch=batch, workers=workers).images
        # Up to float reassociation: a GEMM's blocking may depend on the batch's row count
        # (measured: at most 1.8e-5 on images in [-1, 1] after 4 guided steps).
        torch.testing.assert_close(got, first, rtol=0, atol=1e-4)


def test_eval_scores_do_not_depend_on_batch_or_workers(stand_in):
    a = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=14, batch=14, workers=1, seed=3))
    b = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=14, batch=3, workers=2, seed=3))
    assert (a["batch"], a["workers"], b["batch"], b["workers"]) == (14, 1, 3, 2)
    for key in SCORES:
        assert b[key] == pytest.approx(a[key], rel=1e-5), key
    stages = ("setup", "compile", "sample_full", "sample_cached", "score")
    assert set(b["stage_seconds"]) == set(stages) and all(b["stage_seconds"][k] > 0 for k in stages)
    assert b["images_per_second"] > 0 and b["images_per_second_full"] > 0
    with pytest.raises(L2CError, match="workers must be >= 1"):
        run_eval(EvalConfig(model=NAME, nfe=NFE, samples=4, workers=0))


def test_eval_with_the_shipped_router_reports_everything(stand_in):
    report = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=20, batch=8))
    for key in KEYS:
        assert isinstance(report[key], int | float), key
    assert report["macs_cached"] < report["macs_full"]
    assert (
        report["removed"] > 0 and report["removable"] == 2 * 2 * 2
    )  # 2 cache calls × 2 blocks × 2
    assert math.isfinite(report["psnr"]) and report["psnr"] > 0  # cached ≠ uncached, same seeds
    assert 0 <= report["class_accuracy"] <= 1 and report["fid"] >= 0
    assert report["schedule"]["source"]["file"] == f"{NAME}-ddim-{NFE}.safetensors"
    assert report["metric_names"]["fid"] == "FID (Fashion-MNIST features)"
    assert report["cfg_scale"] == stand_in.default_cfg_scale


def test_all_compute_schedule_reproduces_the_uncached_run(stand_in, tmp_path):
    plan = _plan(stand_in)
    path = tmp_path / "all.json"
    Schedule.all_compute(NAME, 2, plan).save(path)
    report = run_eval(EvalConfig(model=NAME, nfe=NFE, schedule=path, samples=12, batch=12))
    assert report["psnr"] == math.inf  # identical images
    assert report["fid"] == pytest.approx(report["fid_full"], abs=1e-9)
    assert report["class_accuracy"] == report["class_accuracy_full"]
    assert report["removed"] == 0 and report["macs_cached"] == report["macs_full"]


def test_drop_schedule_and_router_file_are_accepted(stand_in, tmp_path):
    plan = _plan(stand_in)
    drop = heuristic("random", plan, model=NAME, depth=2, fraction=0.5, mode="drop")
    cache = dataclasses.replace(drop, mode="cache")
    drop.save(tmp_path / "drop.json")
    cache.save(tmp_path / "cache.json")
    r_drop = run_eval(EvalConfig(model=NAME, nfe=NFE, schedule=tmp_path / "drop.json", samples=10))
    r_cache = run_eval(
        EvalConfig(model=NAME, nfe=NFE, schedule=tmp_path / "cache.json", samples=10)
    )
    assert r_drop["schedule"]["mode"] == "drop" and r_drop["removed"] == r_cache["removed"] == 4
    assert r_drop["psnr"] != r_cache["psnr"]  # zeros are not the cached outputs
    router = demo.ROUTERS / f"{NAME}-ddim-{NFE}.safetensors"
    r_router = run_eval(EvalConfig(model=NAME, nfe=NFE, schedule=router, samples=10, threshold=0.5))
    assert r_router["schedule"]["threshold"] == 0.5


def test_errors_are_clear(stand_in, tmp_path):
    with pytest.raises(L2CError, match="DiT-Tiny has no feature network"):
        run_eval(EvalConfig(model="DiT-Tiny", nfe=NFE))
    with pytest.raises(L2CError, match=f"no shipped router for {NAME} ddim NFE 6.*--schedule"):
        run_eval(EvalConfig(model=NAME, nfe=6, samples=4))
    other = random_schedule(_plan(stand_in), 2, random.Random(0), model="DiT-Tiny")
    other.save(tmp_path / "other.json")
    with pytest.raises(L2CError, match=f"made for DiT-Tiny but the model is {NAME}"):
        run_eval(EvalConfig(model=NAME, nfe=NFE, schedule=tmp_path / "other.json", samples=4))
    assert has_feature_network(stand_in) and not has_feature_network(
        registry.get_spec("U-ViT-Tiny")
    )


def test_cli_json_and_rich_output(stand_in, tmp_path):
    runner = _runner()
    args = ["eval", "--model", NAME, "--nfe", str(NFE), "--samples", "10", "--seed", "2"]
    res = runner.invoke(app, [*args, "--format", "json", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert {*KEYS, *SCORES} <= set(report) and report["seed"] == 2
    # 10 samples make one batch of the default size, which one worker draws.
    assert (report["batch"], report["workers"]) == (min(DEFAULT_BATCH, 10), 1)
    res = runner.invoke(app, [*args, "--format", "json", "--batch", "4", "--workers", "2"])
    assert res.exit_code == 0, res.stderr
    assert (json.loads(res.stdout)["batch"], json.loads(res.stdout)["workers"]) == (4, 2)
    assert report["world_size"] == 1 and report["machine"]["device"] == "cpu"
    assert json.loads((tmp_path / "r.json").read_text()) == report
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.stderr
    assert "FID (Fashion-MNIST features)" in res.stdout and "removed" in res.stdout
    res = runner.invoke(app, ["eval", "--model", "DiT-Tiny", "--nfe", "4"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.strip().count("\n") == 0 and "no feature network" in res.stderr


def _plan(spec):
    from l2c_compile.models.select import make_spec_plan

    return make_spec_plan(spec, None, NFE)


# ----------------------------------------------------------------------------- several ranks


def test_shards_deal_whole_batches_round_robin():
    a, batch = shard_indices(10, 3, 0, 2)
    b, _ = shard_indices(10, 3, 1, 2)
    assert batch == 3 and a.tolist() == [0, 1, 2, 6, 7, 8] and b.tolist() == [3, 4, 5, 9]
    assert shard_indices(10, 3, 0, 1)[0].tolist() == list(range(10))
    # Fewer batches than ranks: the batch shrinks so every rank draws some.
    shares = [shard_indices(5, 250, r, 4) for r in range(4)]
    assert all(len(idx) > 0 and bs == 1 for idx, bs in shares)
    assert sorted(torch.cat([idx for idx, _ in shares]).tolist()) == list(range(5))
    with pytest.raises(L2CError, match="3 samples cannot be shared by 4 ranks"):
        shard_indices(3, 2, 0, 4)


_DRIVER = """
import sys
from pathlib import Path

import pytest

from l2c_compile.cli.main import app
from tests.fmnist_stand_ins import use_feature_net, use_model, use_router_dir

tmp, name = Path(sys.argv[1]), sys.argv[2]
patch = pytest.MonkeyPatch()
use_feature_net(tmp, patch)
use_model(tmp, patch, "DiT-FMNIST", name)
use_router_dir(tmp, patch)
app(sys.argv[3:], prog_name="l2c-compile")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_score_what_one_process_scores(stand_in, tmp_path):
    """torchrun, 2 CPU ranks: the same seeds give the same FID (and every other score)."""
    one = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=12, batch=3, seed=1))
    (tmp_path / "driver.py").write_text(_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    out = tmp_path / "two.json"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(_free_port()), str(tmp_path / "driver.py"), str(tmp_path), NAME,
        "eval", "--model", NAME, "--nfe", str(NFE), "--samples", "12", "--batch", "3",
        "--seed", "1", "--format", "json", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)  # only rank 0 prints: one JSON document
    assert json.loads(out.read_text()) == two  # and only rank 0 wrote the file
    assert (one["world_size"], two["world_size"]) == (1, 2) and two["batch"] == 3
    for key in SCORES:  # measured: FID and PSNR agree to ~3e-7 (float32 rounding of other threads)
        assert two[key] == pytest.approx(one[key], rel=1e-5), key
    assert one["fid"] > 0 and one["fid"] != one["fid_full"]


def test_eval_runs_the_regional_backend_on_cpu_by_default_and_scores_as_eager_does(stand_in):
    """The oneDNN/compiled sublayers change the samples by float reassociation only."""
    fast = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=12, batch=6, workers=1, seed=5))
    eager = run_eval(EvalConfig(model=NAME, nfe=NFE, samples=12, batch=6, workers=1, seed=5,
                                backend="eager"))
    assert (fast["backend"], eager["backend"]) == ("regional", "eager")
    for key in SCORES:
        assert fast[key] == pytest.approx(eager[key], rel=1e-3, abs=1e-3), key
    with pytest.raises(L2CError, match="unknown backend"):
        run_eval(EvalConfig(model=NAME, nfe=NFE, samples=4, backend="tvm"))
