"""Hardware features: probed once, switchable for tests, and every dependent path degrades or refuses.

The bf16 CPU path is the case that broke on AVX2-only CPUs (oneDNN has no bf16 GEMM there): these
tests run the no-bf16 path on every machine, by the switch and by capping oneDNN's ISA.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import l2c_compile
from l2c_compile import features
from l2c_compile.errors import L2CError
from l2c_compile.samplers import make_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit
from tests.test_cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_feature_is_reported_and_the_switch_turns_one_off(monkeypatch):
    report = features.report()
    assert set(report) == set(features.FEATURES)
    assert report["onednn"] == torch.backends.mkldnn.is_available()
    assert report["cuda"] == torch.cuda.is_available()
    monkeypatch.setenv(*features.disabled("onednn", "cuda").popitem())
    assert not features.has("onednn") and not features.has("cuda")
    assert features.report()["onednn_bf16"] == report["onednn_bf16"]  # the others untouched
    with pytest.raises(KeyError, match="unknown feature"):
        features.has("avx9000")


def test_require_names_the_missing_feature_in_one_line(monkeypatch):
    monkeypatch.setenv(*features.disabled("onednn_bf16").popitem())
    with pytest.raises(L2CError) as info:
        features.require("onednn_bf16", "the bf16 GEMM benchmark")
    message = str(info.value)
    assert "\n" not in message
    assert "the bf16 GEMM benchmark needs oneDNN bfloat16 GEMMs" in message
    assert features.DISABLE_ENV in message


def test_fallback_note_only_where_a_slower_path_is_taken(monkeypatch):
    assert features.fallback_note(torch.float32, "cpu", "regional") is None
    assert features.fallback_note(torch.bfloat16, "cuda", "regional") is None
    monkeypatch.setenv(*features.disabled("onednn_bf16").popitem())
    note = features.fallback_note(torch.bfloat16, "cpu", "regional")
    assert note is not None and "\n" not in note and "regional" in note and "slower" in note


@pytest.mark.parametrize("backend", ["eager", "regional"])
def test_bf16_without_onednn_bf16_compiles_runs_and_records_the_fallback(backend, monkeypatch,
                                                                           tmp_path):
    """What an AVX2-only CPU does: torch's bf16 linears, the same numbers, the note in the record."""
    from l2c_compile.models.registry import build_model, get_spec, init_random

    monkeypatch.setenv(*features.disabled("onednn_bf16").popitem())
    torch._dynamo.reset()
    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 4)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, len(model.transformer_blocks()), random.Random(2), p=0.5)
    compiled = l2c_compile.compile(model, plan, sched, dtype="bfloat16", backend=backend,
                                   model_info=spec.to_dict())
    eager = l2c_compile.compile(model, plan, sched, dtype="bfloat16")
    noise, labels = inputs(model)
    got = compiled(noise, labels, 2.0)
    assert torch.isfinite(got).all()
    assert rel_error(got, eager(noise, labels, 2.0)) <= 2e-2
    assert compiled.info["fallbacks"] and "oneDNN bfloat16" in compiled.info["fallbacks"][0]
    compiled.save(tmp_path / "art")
    manifest = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert manifest["fallbacks"] == compiled.info["fallbacks"]  # the manifest records what ran
    loaded = l2c_compile.load(tmp_path / "art")
    assert rel_error(loaded(noise, labels, 2.0), got) <= 2e-2


def test_fallback_is_not_recorded_where_the_fast_path_runs():
    model = tiny_dit(4, depth=1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    assert "fallbacks" not in l2c_compile.compile(model, plan, None).info  # fp32: byte-identical manifests


def test_cli_bf16_regional_compile_verify_sample_on_a_cpu_without_onednn_bf16(monkeypatch, tmp_path):
    """The reported failure, end to end: compile, verify and sample exit 0 and say what ran."""
    monkeypatch.setenv(*features.disabled("onednn_bf16").popitem())
    torch._dynamo.reset()
    art = tmp_path / "a"
    result = cli("compile", "--model", "DiT-Tiny", "--nfe", "4", "--init", "random", "--dtype",
                 "bfloat16", "--backend", "regional", "-o", art)
    assert result.exit_code == 0, result.stderr or result.stdout
    assert "oneDNN bfloat16" in result.stderr and "Traceback" not in result.stderr
    result = cli("verify", art, "--format", "json")
    assert result.exit_code == 0, result.stderr or result.stdout
    assert json.loads(result.stdout)["fallbacks"]
    result = cli("sample", art, "--classes", "1,2", "-o", tmp_path / "x.png")
    assert result.exit_code == 0, result.stderr or result.stdout
    assert (tmp_path / "x.png").stat().st_size > 0


def test_onednn_isa_capped_to_avx2_takes_the_fallback_in_a_fresh_process():
    """``ONEDNN_MAX_CPU_ISA=AVX2`` reproduces an AVX2-only CPU on any x86 machine: the probe (a real
    oneDNN bf16 call) says no, and a regional bf16 sampler still runs."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    code = textwrap.dedent(
        """
        import torch, l2c_compile
        from l2c_compile import features
        from l2c_compile.samplers import make_plan
        from tests.helpers import inputs, tiny_dit
        if features.has("onednn_bf16"):
            raise SystemExit("uncapped")
        model = tiny_dit(1, depth=1)
        plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
        sampler = l2c_compile.compile(model, plan, None, dtype="bfloat16", backend="regional")
        noise, labels = inputs(model)
        assert torch.isfinite(sampler(noise, labels, 2.0)).all()
        print("ok", sampler.info["fallbacks"][0][:40])
        """
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    env.pop(features.DISABLE_ENV, None)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if done.returncode == 1 and done.stderr.strip().endswith("uncapped"):
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 does not switch oneDNN's bf16 GEMMs off on this CPU")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok note:")
