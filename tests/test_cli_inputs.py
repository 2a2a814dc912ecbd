"""Inputs are checked before the first model call (issue 12, items 4 and 9).

`sample` must not spend minutes sampling and only then fail on its VAE, its classes or its output
path; an unavailable `--device` is one line, not a traceback.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import l2c_compile
from l2c_compile.cli.main import app
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler

runner = CliRunner()


@pytest.fixture(scope="module")
def latent_artifact(tmp_path_factory) -> Path:
    """A DiT-Tiny artifact (random weights); the VAE tests make it pose as a latent model."""
    out = tmp_path_factory.mktemp("a") / "art"
    r = runner.invoke(
        app, ["compile", "-m", "DiT-Tiny", "--init", "random", "--nfe", "2", "-o", str(out)]
    )
    assert r.exit_code == 0, r.stderr
    return out


@pytest.fixture()
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled before checking the inputs")

    monkeypatch.setattr(CompiledSampler, "forward", refuse)


def _one_line(r, *needles: str) -> str:
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _pretend_latent(monkeypatch) -> None:
    """Make the tiny pixel-space artifact look like a latent model (needs --vae)."""
    import l2c_compile.runtime.artifact as artifact

    real_load = artifact.load

    def load(*args, **kwargs):
        sampler = real_load(*args, **kwargs)
        sampler.record = dataclasses.replace(sampler.record, model={**sampler.record.model, "pixel_space": False})
        return sampler

    monkeypatch.setattr(artifact, "load", load)


@pytest.mark.parametrize(
    ("make", "needles"),
    [
        (lambda p: p / "missing-vae", ["VAE folder not found"]),
        (lambda p: (p / "empty-vae").mkdir() or p / "empty-vae", ["has no config.json"]),
        (
            lambda p: "stabilityai/sd-vae-ft-ema",
            ["VAE folder not found"],
        ),  # a hub name: no download
    ],
)
def test_sample_checks_the_vae_before_sampling(
    latent_artifact, tmp_path, monkeypatch, no_sampling, make, needles
) -> None:
    _pretend_latent(monkeypatch)
    vae = make(tmp_path)
    r = runner.invoke(
        app, ["sample", str(latent_artifact), "--vae", str(vae), "-o", str(tmp_path / "g.png")]
    )
    _one_line(r, *needles)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--classes", "0,10"], ["label 10 is out of range", "classes 0..9"]),
        (["--classes", "-1"], ["label -1 is out of range"]),
        (["--classes", "a,b"], ["comma-separated integers"]),
        (["--classes", ","], ["names no class"]),
    ],
)
def test_sample_checks_classes_before_sampling(
    latent_artifact, tmp_path, no_sampling, args, needles
) -> None:
    r = runner.invoke(app, ["sample", str(latent_artifact), *args, "-o", str(tmp_path / "g.png")])
    _one_line(r, *needles)


def test_sample_checks_the_output_path_before_sampling(
    latent_artifact, tmp_path, no_sampling
) -> None:
    r = runner.invoke(app, ["sample", str(latent_artifact), "-o", str(tmp_path)])
    _one_line(r, "is an existing folder")
    (tmp_path / "f").write_text("x")
    r = runner.invoke(app, ["sample", str(latent_artifact), "-o", str(tmp_path / "f" / "g.png")])
    _one_line(r, "is a file, not a folder")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["compile", "verify", "sample", "train"])
def test_unavailable_device_is_one_line(latent_artifact, tmp_path, command) -> None:
    args = {
        "compile": [
            "compile",
            "-m",
            "DiT-Tiny",
            "--init",
            "random",
            "--nfe",
            "2",
            "-o",
            str(tmp_path / "x"),
        ],
        "verify": ["verify", str(latent_artifact)],
        "sample": ["sample", str(latent_artifact), "-o", str(tmp_path / "g.png")],
        "train": [
            "train",
            "-m",
            "DiT-Tiny",
            "--init",
            "random",
            "--nfe",
            "2",
            "--data",
            "self",
            "--steps",
            "1",
            "-o",
            str(tmp_path / "r.safetensors"),
        ],
    }[command]
    r = runner.invoke(app, [*args, "--device", "cuda"])
    _one_line(r, "device 'cuda' is not available", "available here: cpu")
    assert not (tmp_path / "x").exists() and not (tmp_path / "g.png").exists()


def test_compile_table_shows_passes_as_lines(tmp_path) -> None:
    r = runner.invoke(
        app,
        ["compile", "-m", "DiT-Tiny", "--init", "random", "--nfe", "4", "-o", str(tmp_path / "a")],
    )
    assert r.exit_code == 0, r.stderr
    assert "{'" not in r.stdout and "specialize:" in r.stdout and "dce:" in r.stdout


@pytest.mark.parametrize("command", [["sample"], ["verify"], ["eval"]])
def test_cfg_scale_help_says_what_the_scale_means(command) -> None:
    r = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    text = " ".join(r.stdout.replace("│", " ").split())  # the help panel wraps long lines
    assert "DiT: u + s·(c − u), so 1 = no guidance" in text
    assert "U-ViT: c + s·(c − u), so 0 = no guidance" in text


def test_logs_name_no_source_location() -> None:
    import io

    from rich.console import Console

    from l2c_compile.cli import common

    buf = io.StringIO()
    probe = Console(file=buf, width=100, log_path=common.console._log_render.show_path)
    probe.log("importing the router into a schedule")
    assert ".py:" not in buf.getvalue()


def test_train_checks_its_outputs_before_training(tmp_path) -> None:
    base = [
        "train",
        "-m",
        "DiT-Tiny",
        "--init",
        "random",
        "--nfe",
        "2",
        "--data",
        "self",
        "--steps",
        "1",
    ]
    _one_line(
        runner.invoke(app, [*base, "-o", str(tmp_path)]),
        "cannot write the router",
        "existing folder",
    )
    _one_line(
        runner.invoke(
            app, [*base, "-o", str(tmp_path / "r.safetensors"), "--export-official", str(tmp_path)]
        ),
        "cannot write the official router",
    )
    assert list(tmp_path.iterdir()) == []


def test_vae_for_a_pixel_model_is_refused(latent_artifact, tmp_path, no_sampling) -> None:
    r = runner.invoke(
        app, ["sample", str(latent_artifact), "--vae", str(tmp_path), "-o", str(tmp_path / "g.png")]
    )
    _one_line(r, "draws pixels", "--vae")


def test_wrong_kind_of_file_says_what_it_is(tmp_path):
    """A router given as a schedule, a file given as an artifact, too few samples: one line each."""
    from l2c_compile.apps.evaluate import eval_inputs
    from l2c_compile.schedule import Schedule

    binary = tmp_path / "router.pt"
    binary.write_bytes(b"PK\x03\x04" + bytes(range(256)))
    with pytest.raises(L2CError, match=r"router\.pt is a zip archive, not a schedule .*schedule import"):
        Schedule.load(binary)
    afile = tmp_path / "manifest.json"
    afile.write_text("{}")
    with pytest.raises(L2CError, match="is a file, not an artifact folder"):
        l2c_compile.load(afile)
    with pytest.raises(L2CError, match="at least 4 samples"):
        eval_inputs(3, (1, 32, 32), 10, 0)


def test_schedule_commands_replace_a_schedule_but_never_another_file(tmp_path):
    """-o may be new or an earlier schedule; an unrelated file is left untouched."""
    out = tmp_path / "s.json"
    args = ["schedule", "heuristic", "-m", "DiT-Tiny", "--nfe", "4", "--kind", "all", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 0  # an earlier schedule is replaced
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    r = runner.invoke(app, [*args[:-1], str(notes)])
    assert r.exit_code == 2 and "is not a schedule file; refusing to overwrite it" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and notes.read_text() == "keep me"
    r = runner.invoke(app, [*args[:-1], str(notes / "s.json")])
    assert r.exit_code == 2 and "is a file, not a folder" in r.stderr
