"""`--diffusers DIR` on the CLI: schedules, compile, verify and sample from a saved tiny pipeline."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("diffusers")
from l2c_compile.cli.main import app
from l2c_compile.diffusers.spec import spec_from_config
from tests.diffusers_helpers import save_tiny_pipeline
from tests.test_cli import fake_official_router

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("dit") / "pipe")


def test_schedule_compile_verify_sample(tmp_path, folder):
    router = fake_official_router(tmp_path / "router.pt", rows=6, depth=2)
    sched = tmp_path / "s.json"
    r = _run("schedule", "import", str(router), "--diffusers", str(folder), "--nfe", "6", "-o", str(sched),
             "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(sched.read_text())["model"] == "diffusers:DiTTransformer2DModel"
    art = tmp_path / "art"
    r = _run("compile", "--diffusers", str(folder / "transformer"), "--nfe", "6", "--schedule", str(sched),
             "-o", str(art), "--format", "json")
    assert r.exit_code == 0, r.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["family"] == "diffusers"
    assert manifest["model"]["diffusers_class"] == "DiTTransformer2DModel"
    assert manifest["model"]["config"]["num_layers"] == 2
    r = _run("verify", str(art), "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_rel_error"] <= 1e-5
    png = tmp_path / "x.png"
    r = _run("sample", str(art), "--classes", "1,2", "--vae", str(folder / "vae"), "-o", str(png))
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = _run("schedule", "heuristic", "--diffusers", str(folder), "--nfe", "6", "--kind", "all", "-o",
             str(tmp_path / "h.json"))
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize(("args", "needle"), [
    (["--diffusers", "{folder}/vae"], "holds a diffusers AutoencoderKL; supported: DiTTransformer2DModel"),
    (["--diffusers", "{folder}", "--model", "DiT-Tiny"], "brings its own model and weights"),
    (["--diffusers", "{folder}/scheduler"], "is not a diffusers model folder (no model_index.json or config.json; found scheduler_config.json)"),
    ([], "pass --model NAME"),
])
def test_bad_folders_are_one_line(tmp_path, folder, args, needle):
    args = [a.format(folder=folder) for a in args]
    r = runner.invoke(app, ["compile", *args, "--nfe", "4", "-o", str(tmp_path / "a")])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr


def test_the_official_shape_takes_the_registry_name():
    config = {"num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
              "num_layers": 28, "sample_size": 32, "patch_size": 2, "num_embeds_ada_norm": 1000, "_x": 1}
    spec = spec_from_config("DiTTransformer2DModel", config)
    assert spec.name == "DiT-XL/2" and spec.depth == 28 and "_x" not in spec.config


def _train_args(folder, out, *extra: str) -> list[str]:
    return ["train", "--diffusers", str(folder), "--nfe", "6", "--data", "self", "--pool-size", "4",
            "--steps", "3", "--batch-size", "4", "--lam", "1e-3", "--lr", "0.05", "--checkpoint-every", "0",
            "--device", "cpu", "-o", str(out), "--format", "json", *extra]


def test_train_data_free_then_import_and_compile(tmp_path, folder):
    router = tmp_path / "r.safetensors"
    r = _run(*_train_args(folder, router, "--export-official", str(tmp_path / "r.pt")))
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["model"] == "diffusers:DiTTransformer2DModel" and summary["steps"] == 3
    assert "self" in summary["data"] and summary["trained_rows"]
    sched = tmp_path / "s.json"
    for src in (router, tmp_path / "r.pt"):  # our router format and the official DiT layout
        r = _run("schedule", "import", str(src), "--diffusers", str(folder), "--nfe", "6", "--threshold", "0.5",
                 "-o", str(sched))
        assert r.exit_code == 0, r.output
    r = _run("compile", "--diffusers", str(folder), "--nfe", "6", "--schedule", str(sched), "-o", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_train_under_torchrun_two_gloo_ranks(tmp_path, folder):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    out = tmp_path / "r.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "l2c_compile.cli.main", *_train_args(folder, out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["world_size"] == 2 and out.is_file()
