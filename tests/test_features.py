"""Hardware features: probed once, switchable for tests, and every dependent path degrades or refuses.

The bf16 CPU path is the case that broke on AVX2-only CPUs (oneDNN has no bf16 GEMM there): these
tests run the no-bf16 path on every machine, by the switch and by capping oneDNN's ISA. Machines
this one is not (a GPU without bf16, a CPU without oneDNN) are simulated by replacing the probe
cache ``features._probed``.
"""

from __future__ import annotations

import dataclasses
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
from l2c_compile.errors import L2CError
from l2c_compile.kernels._common import KernelInputError, check_launchable
from l2c_compile.runtime import features
from l2c_compile.runtime.devices import resolve_device
from l2c_compile.runtime.verify import compile_summary
from l2c_compile.samplers import make_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit
from tests.test_cli import assert_one_line_error, cli, ok_json

ROOT = Path(__file__).resolve().parents[1]
EVERYTHING = dict.fromkeys(features.FEATURES, True)


def machine(monkeypatch, **probes: bool) -> list[str]:
    """Pretend the probes answered ``probes`` (the rest: present); returns the names probed, in order."""
    answers, asked = {**EVERYTHING, **probes}, []

    def probed(name: str) -> bool:
        asked.append(name)
        return answers[name]

    monkeypatch.setattr(features, "_probed", probed)
    monkeypatch.delenv(features.DISABLE_ENV, raising=False)
    return asked


def switch_off(monkeypatch, *names: str) -> None:
    monkeypatch.setenv(*features.disabled(*names).popitem())


# ----------------------------------------------------------------------------- has, missing, require


def test_every_feature_is_reported_and_the_switch_turns_one_off(monkeypatch):
    monkeypatch.delenv(features.DISABLE_ENV, raising=False)
    report = features.report()
    assert set(report) == set(features.FEATURES)
    assert report["onednn"] == torch.backends.mkldnn.is_available()
    assert report["cuda"] == torch.cuda.is_available()
    switch_off(monkeypatch, "onednn", "cuda")
    assert not features.has("onednn") and not features.has("cuda")
    assert features.report()["triton"] == report["triton"]  # the others untouched
    with pytest.raises(KeyError, match="unknown feature"):
        features.has("avx9000")


def test_requirements_name_features_and_form_no_cycle():
    assert features.FEATURES["onednn_bf16"].requires == ("onednn",)
    assert features.FEATURES["onednn_fp16"].requires == ("onednn",)
    assert features.FEATURES["cuda_bf16"].requires == ("cuda",)
    for feature in features.FEATURES.values():
        assert set(feature.requires) <= set(features.FEATURES) - {feature.name}
        assert all(not features.FEATURES[r].requires for r in feature.requires)


@pytest.mark.parametrize("name", list(features.FEATURES))
def test_each_feature_switched_off_is_missing_with_the_switch_named(name, monkeypatch):
    machine(monkeypatch)  # a machine that has everything
    assert features.has(name) and features.missing(name) == ""
    features.require(name, "this test")  # present: no error
    switch_off(monkeypatch, name)
    features.check_switch()  # a known name is accepted
    description = features.FEATURES[name].description
    assert not features.has(name)
    assert features.missing(name) == f"{description} is switched off (L2C_DISABLE_FEATURES={name})"
    with pytest.raises(L2CError) as info:
        features.require(name, "the widget")
    assert str(info.value) == (f"the widget needs {description}, which is switched off "
                               f"(L2C_DISABLE_FEATURES={name})")
    for other in features.FEATURES.values():  # what needs it is missing for the same reason
        if name in other.requires:
            assert not features.has(other.name)
            assert features.missing(other.name) == features.missing(name)
        elif other.name != name:
            assert features.has(other.name)


@pytest.mark.parametrize(("required", "dependent"), [("onednn", "onednn_bf16"), ("onednn", "onednn_fp16"),
                                                    ("cuda", "cuda_bf16")])
def test_a_feature_whose_requirement_is_lacking_is_missing_and_never_probed(required, dependent,
                                                                             monkeypatch):
    asked = machine(monkeypatch, **{required: False})
    assert not features.has(dependent)
    assert dependent not in asked  # e.g. no bf16 GEMM is tried without oneDNN
    lacks = f"this machine lacks {features.FEATURES[required].description}"
    assert features.missing(dependent) == lacks
    with pytest.raises(L2CError) as info:
        features.require(dependent, "the widget")
    assert str(info.value) == f"the widget needs {features.FEATURES[dependent].description}; {lacks}"


def test_a_lacking_feature_says_the_machine_lacks_it(monkeypatch):
    machine(monkeypatch, onednn_bf16=False)
    description = features.FEATURES["onednn_bf16"].description
    assert features.missing("onednn_bf16") == f"this machine lacks {description}"
    with pytest.raises(L2CError, match=r"^the bf16 GEMM benchmark needs oneDNN bfloat16 GEMMs .*, which this "
                                       r"machine lacks$"):
        features.require("onednn_bf16", "the bf16 GEMM benchmark")
    switch_off(monkeypatch, "onednn_bf16")  # lacking and switched off: the switch is named
    assert "switched off" in features.missing("onednn_bf16")


def test_require_raises_the_class_it_is_given(monkeypatch):
    switch_off(monkeypatch, "triton")
    with pytest.raises(ValueError, match=r"^op: the thing needs the triton package"):
        features.require("triton", "op: the thing", ValueError)
    # the kernels refuse with their own error class, which is also an L2CError and a ValueError
    with pytest.raises(KernelInputError, match=r"^reuse_x: the Triton kernel needs the triton package, which "
                                               r"is switched off \(L2C_DISABLE_FEATURES=triton\)$"):
        check_launchable("reuse_x", torch.zeros(1, 2, 8), 8)


def test_require_names_the_missing_feature_in_one_line(monkeypatch):
    switch_off(monkeypatch, "onednn_bf16")
    with pytest.raises(L2CError) as info:
        features.require("onednn_bf16", "the bf16 GEMM benchmark")
    message = str(info.value)
    assert "\n" not in message
    assert "the bf16 GEMM benchmark needs oneDNN bfloat16 GEMMs" in message
    assert features.DISABLE_ENV in message


def test_disabled_adds_to_what_is_switched_off(monkeypatch):
    switch_off(monkeypatch, "cuda")
    assert features.disabled("onednn") == {features.DISABLE_ENV: "cuda,onednn"}
    with pytest.raises(KeyError, match="unknown feature"):
        features.disabled("avx9000")


# ----------------------------------------------------------------------------- the switch is user input


@pytest.mark.parametrize(("value", "named"), [
    ("onednn_bf17", "an unknown feature 'onednn_bf17'"),
    (" cuda , ,gpu,avx9000", "unknown features 'avx9000', 'gpu'"),
    ("a\nb,[/red]", "unknown features '[/red]', 'a\\nb'"),
])
def test_check_switch_refuses_unknown_names_in_one_line_listing_the_known(value, named, monkeypatch):
    monkeypatch.setenv(features.DISABLE_ENV, value)
    with pytest.raises(L2CError) as info:
        features.check_switch()
    message = str(info.value)
    assert "\n" not in message
    assert message == f"L2C_DISABLE_FEATURES names {named}; known: {', '.join(features.FEATURES)}"


@pytest.mark.parametrize("value", ["", " , ", "onednn_bf16, cuda"])
def test_check_switch_accepts_known_names_and_blanks(value, monkeypatch):
    monkeypatch.setenv(features.DISABLE_ENV, value)
    features.check_switch()
    assert features.switched_off() <= set(features.FEATURES)


def test_resolve_device_checks_the_switch_and_refuses_meta(monkeypatch):
    monkeypatch.delenv(features.DISABLE_ENV, raising=False)
    with pytest.raises(L2CError, match=r"^device 'meta' holds shapes, not data, so nothing can run there; "
                                       r"available here: cpu"):
        resolve_device("meta")
    with pytest.raises(L2CError, match="device 'meta'"):
        l2c_compile.compile(tiny_dit(0, depth=1), make_plan("ddim", 2, noise_schedule="linear",
                                                          time_input="discrete"), None, device="meta")
    monkeypatch.setenv(features.DISABLE_ENV, "cuda,gpu")
    for device in (None, "cpu"):  # checked whatever the device
        with pytest.raises(L2CError, match=r"^L2C_DISABLE_FEATURES names an unknown feature 'gpu'; known: "):
            resolve_device(device)
    switch_off(monkeypatch, "cuda")
    monkeypatch.setenv(features.DISABLE_ENV, "cuda")
    with pytest.raises(L2CError, match=r"^device 'cuda' is not available \(a CUDA GPU visible to this torch "
                                       r"build is switched off \(L2C_DISABLE_FEATURES=cuda\)\); available "
                                       r"here: cpu"):
        resolve_device("cuda")


def test_cli_refuses_an_unknown_switch_name_and_the_meta_device_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv(features.DISABLE_ENV, "onednn_bf17")
    compile_args = ["compile", "--model", "DiT-Tiny", "--nfe", "2", "--init", "random"]
    assert_one_line_error(cli(*compile_args, "-o", tmp_path / "a"), "L2C_DISABLE_FEATURES",
                          "'onednn_bf17'", "known: onednn, onednn_bf16")
    assert_one_line_error(cli("env"), "L2C_DISABLE_FEATURES", "'onednn_bf17'")
    monkeypatch.delenv(features.DISABLE_ENV)
    assert_one_line_error(cli(*compile_args, "--device", "meta", "-o", tmp_path / "b"), "device 'meta'")


# ----------------------------------------------------------------------------- fallback notes


def test_no_fallback_note_where_every_fast_path_runs(monkeypatch):
    machine(monkeypatch)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for device in ("cpu", "cuda", None):
            for backend in ("eager", "inductor", "regional"):
                assert features.fallback_notes(dtype, device, backend) == []


@pytest.mark.parametrize(("dtype", "feature", "kind"), [(torch.bfloat16, "onednn_bf16", "bfloat16"),
                                                        (torch.float16, "onednn_fp16", "float16")])
@pytest.mark.parametrize("backend", ["eager", "inductor", "regional"])
def test_half_precision_on_a_cpu_without_its_onednn_gemms_takes_torchs_gemm(dtype, feature, kind, backend,
                                                                            monkeypatch):
    machine(monkeypatch, **{feature: False})
    (note,) = features.fallback_notes(dtype, "cpu", backend)
    where = "" if backend == "eager" else f"backend {backend!r}: "
    assert note == (f"note: {where}{features.missing(feature)}; {kind} linears run through torch's reference "
                    "GEMM (correct, slower; float32 is likely faster here)")
    assert features.fallback_notes(torch.float32, "cpu", backend) == []
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    assert features.fallback_notes(other, "cpu", backend) == []  # the other half type has its GEMMs
    assert features.fallback_notes(dtype, "cuda", backend) == []  # a GPU does not use oneDNN
    switch_off(monkeypatch, "onednn")  # without oneDNN at all: the same one note, naming oneDNN
    (note,) = features.fallback_notes(dtype, "cpu", backend)
    assert "oneDNN (torch's mkldnn backend) is switched off (L2C_DISABLE_FEATURES=onednn)" in note


def test_float32_without_onednn_is_slower_only_in_the_compiled_backends(monkeypatch):
    machine(monkeypatch, onednn=False)
    assert features.fallback_notes(torch.float32, "cpu", "eager") == []  # eager never used oneDNN
    for backend in ("regional", "inductor"):
        (note,) = features.fallback_notes(torch.float32, "cpu", backend)
        assert note == (f"note: backend {backend!r}: this machine lacks oneDNN (torch's mkldnn backend); "
                        "float32 linears stay in torch's own GEMM instead of oneDNN's (correct, slower)")
    assert features.fallback_notes(torch.float32, "cuda", "regional") == []


def test_bf16_on_a_gpu_without_native_bf16_is_noted_only_where_there_is_a_gpu(monkeypatch):
    machine(monkeypatch, cuda_bf16=False)
    (note,) = features.fallback_notes(torch.bfloat16, "cuda:0", "eager")
    assert note.startswith("note: this machine lacks bfloat16 matrix instructions on the CUDA GPU; ")
    assert "\n" not in note and "slower" in note
    assert features.fallback_notes(torch.float16, "cuda", "eager") == []
    assert features.fallback_notes(torch.bfloat16, "cpu", "eager") == []
    machine(monkeypatch, cuda=False, cuda_bf16=False)
    assert features.fallback_notes(torch.bfloat16, "cuda", "eager") == []  # no GPU: the device is refused


def test_the_record_holds_the_notes_and_info_lists_them_only_when_there_are_some(monkeypatch):
    machine(monkeypatch, onednn_bf16=False)
    model = tiny_dit(4, depth=1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    compiled = l2c_compile.compile(model, plan, None, dtype="bfloat16")
    notes = features.fallback_notes(torch.bfloat16, "cpu", "eager")
    assert len(notes) == 1 and "reference GEMM" in notes[0]
    assert compiled.record.fallbacks == tuple(notes) and compiled.info["fallbacks"] == notes
    plain = dataclasses.replace(compiled.record, fallbacks=())
    assert "fallbacks" not in plain.to_dict()  # none taken: no key (the manifest stays machine-independent)


def test_compile_summary_lists_the_fallbacks():
    model = tiny_dit(4, depth=1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    compiled = l2c_compile.compile(model, plan, None)
    assert compile_summary(compiled.record)["fallbacks"] == compiled.info.get("fallbacks", [])
    record = dataclasses.replace(compiled.record, fallbacks=("note: a slower path",))
    assert compile_summary(record)["fallbacks"] == ["note: a slower path"]


def test_load_derives_the_fallbacks_again_for_an_overridden_backend(monkeypatch, tmp_path):
    """A float32 eager artifact takes no slower path; loaded as 'regional' on a machine without
    oneDNN it does, and the loaded sampler's info says so (and says nothing back under 'eager')."""
    from l2c_compile.models.registry import build_model, get_spec, init_random

    monkeypatch.delenv(features.DISABLE_ENV, raising=False)
    spec = get_spec("DiT-Tiny")
    plan = make_plan("ddim", 2, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    model = init_random(build_model(spec), 4)
    l2c_compile.compile(model, plan, None, model_info=spec.to_dict()).save(tmp_path / "art")
    switch_off(monkeypatch, "onednn")
    assert "fallbacks" not in l2c_compile.load(tmp_path / "art").info
    regional = l2c_compile.load(tmp_path / "art", backend="regional")
    assert regional.backend == "regional"
    assert regional.info["fallbacks"] == features.fallback_notes(torch.float32, "cpu", "regional")
    assert len(regional.info["fallbacks"]) == 1


def test_fallback_is_not_recorded_where_the_fast_path_runs():
    model = tiny_dit(4, depth=1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    assert "fallbacks" not in l2c_compile.compile(model, plan, None).info  # fp32: byte-identical manifests


@pytest.mark.skipif(not features.has("onednn_bf16"), reason=features.missing("onednn_bf16"))
def test_bf16_with_onednn_bf16_records_no_fallback():
    model = tiny_dit(4, depth=1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    compiled = l2c_compile.compile(model, plan, None, dtype="bfloat16", backend="regional")
    assert "fallbacks" not in compiled.info


# ----------------------------------------------------------------------------- env


def test_env_reports_features_where_triton_runs_and_the_notes(monkeypatch):
    from l2c_compile.kernels._common import INTERPRET

    monkeypatch.delenv(features.DISABLE_ENV, raising=False)
    info = ok_json("env")
    assert "triton_usable" not in info and "triton_interpreter_usable" not in info
    assert info["triton_kernels_on_cuda"] is (features.has("triton") and features.has("cuda"))
    assert info["triton_interpreter_on_cpu"] is (features.has("triton") and INTERPRET)
    assert {f"feature_{name}" for name in features.FEATURES} <= set(info)
    assert info["notes"] == features.machine_notes(INTERPRET)
    switch_off(monkeypatch, "onednn_bf16", "triton")
    info = ok_json("env")
    assert info["feature_onednn_bf16"] is False and info["triton_kernels_on_cuda"] is False
    switched = [n for n in info["notes"] if "switched off" in n]
    assert any("--dtype bfloat16 on CPU" in n for n in switched)
    assert any("fused reuse epilogues run their torch references" in n for n in switched)
    result = cli("env")  # rich: the notes are lines after the table, not a row holding a list
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not any(line.lstrip("│┃| ").startswith("notes") for line in lines)
    printed = [line for line in lines if line.startswith("note: ")]
    assert len(printed) == len(info["notes"])
    assert "oneDNN bfloat16 GEMMs" in printed[0]


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
    if not features.has("onednn"):
        pytest.skip(features.missing("onednn"))
    code = textwrap.dedent(
        """
        import torch, l2c_compile
        from l2c_compile.runtime import features
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
