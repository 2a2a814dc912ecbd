"""`l2c-compile compile → verify → sample` end to end on random tiny models, and its error paths."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from l2c_compile.cli.main import app
from l2c_compile.models.select import make_spec_plan, select_spec, spec_blocks
from l2c_compile.schedule import Schedule

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older click mixes the streams
        return result.output


@pytest.mark.parametrize(("model", "sampler", "nfe"), [("DiT-Tiny", "ddim", 6), ("U-ViT-Tiny", "dpm-solver-2", 6)])
def test_compile_verify_sample(tmp_path, model, sampler, nfe):
    sched = tmp_path / "s.json"
    r = _run("schedule", "heuristic", "--model", model, "--sampler", sampler, "--nfe", str(nfe),
             "--kind", "random", "--fraction", "0.5", "-o", str(sched))
    assert r.exit_code == 0, r.output
    art = tmp_path / "art"
    r = _run("compile", "--model", model, "--init", "random", "--seed", "3", "--sampler", sampler,
             "--nfe", str(nfe), "--schedule", str(sched), "-o", str(art), "--format", "json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["distinct_graphs"] >= 2 and summary["macs_compiled"] < summary["macs_uncached"]
    r = _run("verify", str(art), "--format", "json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["ok"] and v["max_rel_error"] <= 1e-5 and v["distinct_graphs"] == summary["distinct_graphs"]
    png = tmp_path / "grid.png"
    r = _run("sample", str(art), "--classes", "0,1,2", "--seed", "1", "--latent-preview", "-o", str(png))
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_and_verify_refuse_a_cache_that_does_not_fit_before_drawing(tmp_path, monkeypatch):
    """The artifact's recorded cache peak × the samples drawn at once, against the device's free
    memory: one line, exit 2, nothing written (free memory made small here)."""
    from l2c_compile.compiler import memory

    sched, art, png = tmp_path / "s.json", tmp_path / "art", tmp_path / "grid.png"
    assert _run("schedule", "heuristic", "--model", "DiT-Tiny", "--nfe", "4", "--kind", "all", "-o",
                str(sched)).exit_code == 0
    r = _run("compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", "4", "--schedule", str(sched),
             "-o", str(art), "--format", "json")
    assert r.exit_code == 0, r.output
    peak = json.loads((art / "manifest.json").read_text())["peak_cache_bytes_per_image"]
    assert peak > 0
    monkeypatch.setattr(memory, "free_memory", lambda device: 3 * peak - 1)  # room for two samples' cache
    r = _run("sample", str(art), "--classes", "0,1", "--latent-preview", "-o", str(png))
    assert r.exit_code == 0 and png.is_file(), r.output
    png.unlink()
    for args in (("sample", str(art), "--classes", "0,1,2", "--latent-preview", "-o", str(png)),
                 ("verify", str(art), "--batch", "3")):
        r = _run(*args)
        err = _stderr(r).strip()
        assert r.exit_code == 2 and len(err.splitlines()) == 1, r.output
        assert "this call needs" in err and "cache peak" in err and "draw fewer samples at once" in err
        assert not png.exists()


def test_sample_writes_png_files_only(tmp_path):
    """A .jpg name would hold PNG bytes, a GIF needs a .gif name: one line each, before any work."""
    art = tmp_path / "art"
    assert _run("compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", "4", "-o", str(art)).exit_code == 0
    for args, needle in ((("-o", str(tmp_path / "x.jpg")), "give a file name ending in .png"),
                         (("-o", str(tmp_path / "x")), "give a file name ending in .png"),
                         (("--prompt", "a cat", "--diffusers", str(tmp_path), "--gif", str(tmp_path / "v"),
                           "-o", str(tmp_path / "x.png")), "give a file name ending in .gif")):
        r = _run("sample", str(art), "--latent-preview", *args)
        assert r.exit_code == 2 and needle in _stderr(r) and len(_stderr(r).strip().splitlines()) == 1, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_compile_bad_inputs_exit_2_with_one_line(tmp_path):
    sched = tmp_path / "s.json"
    assert _run("schedule", "heuristic", "--model", "DiT-Tiny", "--nfe", "6", "--kind", "all",
                "--fraction", "1", "-o", str(sched)).exit_code == 0
    three = tmp_path / "three.json"  # the right model, depth and plan, but a third sublayer kind
    spec = select_spec("DiT-Tiny", None)
    Schedule.all_compute("DiT-Tiny", spec_blocks(spec), make_spec_plan(spec, None, 6),
                         kinds=("attn", "cross", "mlp")).save(three)
    cases = [
        (["--model", "DiT-Tiny", "--init", "random", "--nfe", "6", "--schedule", str(three)],
         "schedule covers sublayer kinds ['attn', 'cross', 'mlp'], this model's blocks have ['attn', 'mlp']"),
        (["--model", "DiT-Nope", "--init", "random", "--nfe", "6"], "unknown model"),
        (["--model", "DiT-Tiny", "--nfe", "6"], "pass --checkpoint PATH or --init random"),
        (["--model", "DiT-Tiny", "--init", "random", "--nfe", "6", "--sampler", "euler"], "unknown sampler"),
        (["--model", "DiT-Tiny", "--init", "random", "--nfe", "8", "--schedule", str(sched)], "NFE"),
        (["--model", "U-ViT-Tiny", "--init", "random", "--nfe", "6", "--sampler", "ddim", "--schedule", str(sched)],
         "DiT-Tiny"),
        (["--model", "DiT-Tiny", "--checkpoint", str(tmp_path / "missing.pt"), "--nfe", "6"], "missing.pt"),
        (["--model", "DiT-Tiny", "--init", "random", "--nfe", "6", "--dtype", "int8"], "unknown dtype"),
        (["--model", "DiT-Tiny", "--init", "random", "--nfe", "6", "--schedule", str(tmp_path / "nope.json")],
         "nope.json"),
    ]
    for args, needle in cases:
        out = tmp_path / "art"
        r = runner.invoke(app, ["compile", *args, "-o", str(out)])
        err = _stderr(r)
        assert r.exit_code == 2, (args, r.output)
        assert needle in err, (needle, err)
        assert "Traceback" not in r.output
        assert not out.exists()


def test_verify_and_sample_reject_non_artifacts(tmp_path):
    r = runner.invoke(app, ["verify", str(tmp_path)])
    assert r.exit_code == 2 and "manifest.json is missing" in _stderr(r)
    r = runner.invoke(app, ["sample", str(tmp_path / "none"), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "does not exist" in _stderr(r)
    assert not (tmp_path / "x.png").exists()
