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
    assert json.loads(r.output)["max_rel_error"] <= 1e-5
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
