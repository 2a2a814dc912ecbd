"""Artifacts: save → load round trip, hash verification, refusal of anything unexpected."""

from __future__ import annotations

import json
import random

import pytest

import l2c_compile
from l2c_compile.errors import L2CError
from l2c_compile.models.registry import get_spec
from l2c_compile.samplers import make_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit


@pytest.fixture()
def artifact(tmp_path):
    spec = get_spec("DiT-Tiny")
    from l2c_compile.models.registry import build_model, init_random

    model = init_random(build_model(spec), 0)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, 3, random.Random(0), p=0.7, model="DiT-Tiny")
    compiled = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict())
    out = compiled.save(tmp_path / "art")
    return compiled, out


def test_round_trip_gives_identical_samples(artifact):
    compiled, out = artifact
    loaded = l2c_compile.load(out)
    noise, labels = inputs(compiled.model)
    assert rel_error(loaded(noise, labels, 4.0), compiled(noise, labels, 4.0)) == 0.0
    assert loaded.source == compiled.source
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "l2c-artifact" and manifest["version"] == 5
    assert manifest["hoist"] is True and manifest["hoisted"]["outputs"] > 0
    assert set(manifest["files"]) == {"sampler.py", "weights.safetensors"}
    assert manifest["schedule"]["nfe"] == 4 and manifest["model"]["name"] == "DiT-Tiny"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_tampered_code_is_refused(artifact):
    _, out = artifact
    path = out / "sampler.py"
    path.write_text(path.read_text() + "\n# injected\n")
    with pytest.raises(L2CError, match=r"sampler\.py does not match its sha256"):
        l2c_compile.load(out)


def test_tampered_weights_are_refused(artifact):
    _, out = artifact
    data = bytearray((out / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(L2CError, match=r"weights\.safetensors does not match"):
        l2c_compile.load(out)


def test_an_artifact_from_before_hoisting_is_refused_in_one_line(artifact):
    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = 3  # what l2c-compile wrote before the prologue existed (no hoist fields)
    for key in ("hoist", "hoist_limit_bytes", "hoisted"):
        manifest.pop(key)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(L2CError, match=r"^artifact format version 3 is not supported \(this l2c-compile reads "
                                       r"version 5\); recompile it$"):
        l2c_compile.load(out)


def test_an_artifact_whose_loop_picks_caches_by_index_is_refused_in_one_line(artifact):
    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = 4  # sample() read `out[1]`; its sampler.py is no longer what load regenerates
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(L2CError, match=r"^artifact format version 4 is not supported \(this l2c-compile reads "
                                       r"version 5\); recompile it$"):
        l2c_compile.load(out)


@pytest.mark.parametrize("edit", ["version", "format", "missing_file", "bad_json", "no_manifest"])
def test_bad_artifacts_are_clear_errors(artifact, edit):
    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if edit == "version":
        manifest["version"] = 99
        manifest_path.write_text(json.dumps(manifest))
        match = "format version 99 is not supported"
    elif edit == "format":
        manifest["format"] = "something-else"
        manifest_path.write_text(json.dumps(manifest))
        match = "not an l2c-compile artifact"
    elif edit == "missing_file":
        (out / "weights.safetensors").unlink()
        match = "missing weights.safetensors"
    elif edit == "bad_json":
        manifest_path.write_text("{not json")
        match = "not valid JSON"
    else:
        manifest_path.unlink()
        match = "manifest.json is missing"
    with pytest.raises(L2CError, match=match):
        l2c_compile.load(out)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [("dtype", "float64", "unknown dtype 'float64'"), ("cfg", "yes", "field 'cfg' must be true or false"),
     ("cuda_graph", None, "field 'cuda_graph' must be true or false"),
     ("backend", "tensorrt", "unknown backend 'tensorrt'")],
)
def test_manifest_fields_are_checked_when_parsed(artifact, key, value, match):
    from l2c_compile.runtime.artifact import read_manifest

    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert getattr(read_manifest(out), key) == manifest[key]  # the typed view of the same field
    manifest[key] = value
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(L2CError, match=match):
        l2c_compile.load(out)


def test_missing_folder(tmp_path):
    with pytest.raises(L2CError, match="does not exist"):
        l2c_compile.load(tmp_path / "nope")


def test_save_replaces_an_existing_artifact_atomically(artifact, tmp_path):
    _, out = artifact
    model = tiny_dit(1)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    other = l2c_compile.compile(
        model,
        plan,
        None,
        model_info={
            "name": "custom",
            "family": "dit",
            "kwargs": {
                "input_size": 8,
                "patch_size": 2,
                "in_channels": 4,
                "hidden_size": 32,
                "depth": 2,
                "num_heads": 2,
                "num_classes": 5,
                "learn_sigma": True,
            },
        },
    )
    other.save(out)
    loaded = l2c_compile.load(out)
    assert loaded.info["nfe"] == 2
    noise, labels = inputs(model)
    assert rel_error(loaded(noise, labels, 4.0), other(noise, labels, 4.0)) == 0.0


def test_artifact_with_fused_ops_loads_in_a_fresh_process(tmp_path):
    """The generated module imports the kernels package itself (it registers torch.ops.l2c.*)."""
    import subprocess
    import sys

    model = tiny_dit(2, depth=2)
    plan = make_plan("ddim", 4, noise_schedule="linear", time_input="discrete")
    sched = random_schedule(plan, 2, random.Random(0), p=1.0)
    compiled = l2c_compile.compile(model, plan, sched, model_info={
        "name": "custom", "family": "dit",
        "kwargs": {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 32, "depth": 2,
                   "num_heads": 2, "num_classes": 5, "learn_sigma": True}})
    assert "torch.ops.l2c." in compiled.source
    out = compiled.save(tmp_path / "art")
    code = (f"import torch, l2c_compile.runtime.artifact as r; s = r.load({str(out)!r}); "
            "print(s(torch.zeros(1, 4, 8, 8), torch.zeros(1, dtype=torch.long), 2.0).shape)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "torch.Size([1, 4, 8, 8])" in res.stdout


def _rehash(out, name: str) -> None:
    """Put ``name``'s new sha256 into the manifest, as someone tampering with an artifact would."""
    import hashlib

    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")


def test_the_same_inputs_give_a_byte_identical_artifact(artifact, tmp_path):
    compiled, out = artifact
    spec = get_spec("DiT-Tiny")
    from l2c_compile.models.registry import build_model, init_random

    model = init_random(build_model(spec), 0)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, 3, random.Random(0), p=0.7, model="DiT-Tiny")
    again = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict()).save(tmp_path / "again")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json", "sampler.py", "weights.safetensors"]
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    assert compiled.timings and "seconds" not in (out / "manifest.json").read_text()


def test_edited_and_rehashed_sampler_code_is_refused(artifact):
    _, out = artifact
    path = out / "sampler.py"
    path.write_text(path.read_text().replace("    return x\n", "    import os  # anything at all\n    return x\n"))
    _rehash(out, "sampler.py")
    with pytest.raises(L2CError, match=r"^artifact .*: sampler\.py differs from the code this l2c-compile generates"):
        l2c_compile.load(out)


def test_manifest_dtype_edit_is_refused(artifact):
    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["dtype"] = "bfloat16"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(L2CError, match=r"says dtype bfloat16 but weights\.safetensors holds float32 tensors"):
        l2c_compile.load(out)


@pytest.mark.parametrize("field", ["schedule", "graphs", "cfg", "sampler", "model"])
def test_every_manifest_field_load_acts_on_is_checked(artifact, field):
    _, out = artifact
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if field == "schedule":  # reuse nothing in the last call: the code would differ
        manifest["schedule"]["calls"][-1].update(reuse_attn=[], reuse_mlp=[])
        match = "sampler.py differs"
    elif field == "graphs":
        manifest["graphs"][0]["macs_per_image"] += 1
        match = "field 'graphs' is not what this l2c-compile derives"
    elif field == "cfg":
        manifest["cfg"] = False
        match = "sampler.py differs"
    elif field == "sampler":
        manifest["sampler"]["calls"][0]["timestep"] += 1.0
        match = "sampler calls are not what its sampler and options give"
    else:  # the CLI's sample and verify act on the guidance default
        manifest["model"]["default_cfg_scale"] = 9.0
        match = r"model record for DiT-Tiny differs from the registry's \(field 'default_cfg_scale'\)"
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    with pytest.raises(L2CError, match=match):
        l2c_compile.load(out)


@pytest.mark.parametrize(("name", "mode"), [("U-ViT-Tiny", "cache"), ("DiT-Tiny", "drop")])
def test_other_families_and_drop_mode_round_trip(tmp_path, name, mode):
    import dataclasses

    from l2c_compile.models.registry import build_model, init_random, num_blocks

    spec = get_spec(name)
    model = init_random(build_model(spec), 0)
    plan = make_plan(spec.default_sampler, 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, num_blocks(spec), random.Random(2), p=0.6, model=name)
    sched = dataclasses.replace(sched, mode=mode)
    compiled = l2c_compile.compile(model, plan, sched, model_info=spec.to_dict())
    loaded = l2c_compile.load(compiled.save(tmp_path / "art"))
    noise, labels = inputs(compiled.model)
    assert loaded.source == compiled.source
    assert rel_error(loaded(noise, labels, 2.0), compiled(noise, labels, 2.0)) == 0.0


def test_free_text_from_the_manifest_never_becomes_code(tmp_path):
    """A model name is the only free text that reaches the generated source: it stays a comment."""
    model = tiny_dit(0)
    plan = make_plan("ddim", 2, noise_schedule="linear", time_input="discrete")
    evil = 'x"""\nraise SystemExit("ran")\n"""\u2028raise SystemExit("ran")\r#'
    compiled = l2c_compile.compile(model, plan, None, model_info={"name": evil})
    assert "raise SystemExit" not in "".join(
        line for line in compiled.source.splitlines() if not line.lstrip().startswith("#")
    )
    noise, labels = inputs(model)
    assert compiled(noise, labels, 2.0).shape == noise.shape


def test_the_backend_chosen_at_compile_time_is_recorded_and_honoured(tmp_path):
    """An inductor artifact loads as inductor (what verify and sample then run), unless overridden."""
    from l2c_compile.models.registry import build_model, init_random
    from l2c_compile.runtime.artifact import read_manifest

    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 3)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    info = spec.to_dict()
    compiled = l2c_compile.compile(model, plan, None, backend="inductor", model_info=info)
    out = tmp_path / "art"
    compiled.save(out)
    assert read_manifest(out).backend == "inductor"
    loaded = l2c_compile.load(out)
    assert loaded.backend == "inductor" and loaded.info["backend"] == "inductor"
    assert l2c_compile.load(out, backend="eager").backend == "eager"
    with pytest.raises(L2CError, match="unknown backend 'cuda'"):
        l2c_compile.load(out, backend="cuda")
    eager = tmp_path / "eager"
    l2c_compile.compile(model, plan, None, model_info=info).save(eager)
    assert l2c_compile.load(eager).backend == "eager"
