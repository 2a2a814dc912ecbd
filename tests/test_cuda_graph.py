"""Whole-trajectory CUDA graphs: flag plumbing and error paths on CPU, capture/replay on a GPU.

CPU tests check everything that does not need a device: the flag in compile/load/manifest/CLI,
the clear errors, and the capture-once / replay / refuse-another-shape / re-capture-when-stale
logic with a stand-in capture that runs eagerly into the same static buffers. The ``gpu`` tests
capture real graphs (eager steps, fused Triton epilogues, inductor steps, bf16).
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from typer.testing import CliRunner

import l2c_compile
from l2c_compile.cli.main import app
from l2c_compile.compiler import driver as compiler_module
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.models.registry import build_model, get_spec, init_random
from l2c_compile.runtime import cuda_graph, features
from l2c_compile.runtime import sampler as runtime
from l2c_compile.samplers import make_plan
from tests.families import CASES, DECLARED, case_inputs, case_model, case_plan
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit

runner = CliRunner()
needs_cuda = pytest.mark.skipif(not features.has("cuda"), reason=features.missing("cuda"))


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # older click mixes the streams
        return result.output


def _dit_case(seed: int = 0, nfe: int = 4, **overrides):
    model = tiny_dit(seed, **overrides)
    plan = make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")
    sched = random_schedule(plan, len(model.transformer_blocks()), random.Random(seed), p=0.7)
    return model, plan, sched


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 comparisons on CUDA: no TF32 (cuDNN enables it for convolutions by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture()
def artifact(tmp_path):
    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 0)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, 3, random.Random(0), p=0.7, model="DiT-Tiny")
    return l2c_compile.compile(model, plan, sched, model_info=spec.to_dict()).save(tmp_path / "art")


# ── CPU: flag plumbing and error paths ──────────────────────────────────────────────────────
def test_cuda_graph_on_cpu_is_a_clear_error():
    model, plan, sched = _dit_case()
    with pytest.raises(
        L2CError, match=r"cuda_graph=True needs the model on a CUDA device, got cpu"
    ):
        l2c_compile.compile(model, plan, sched, cuda_graph=True)
    compiled = l2c_compile.compile(model, plan, sched)
    assert compiled.cuda_graph is False and compiled.info["cuda_graph"] is False
    with pytest.raises(L2CError, match="needs the model on a CUDA device"):
        compiled.cuda_graph = True
    assert compiled.cuda_graph is False  # a refused switch leaves the sampler usable
    noise, labels = inputs(model)
    assert compiled(noise, labels, 4.0).shape == noise.shape


def test_manifest_records_the_flag_and_load_can_override_it(artifact):
    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["cuda_graph"] is False
    assert l2c_compile.load(artifact).cuda_graph is False
    with pytest.raises(L2CError, match="needs the model on a CUDA device"):
        l2c_compile.load(artifact, cuda_graph=True)
    # An artifact compiled for graphs (on a GPU machine) loaded on CPU: refused unless overridden.
    manifest["cuda_graph"] = True
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(L2CError, match=r"or cuda_graph=False"):
        l2c_compile.load(artifact)
    loaded = l2c_compile.load(artifact, cuda_graph=False)
    assert loaded.cuda_graph is False and loaded.info["cuda_graph"] is False


def test_cli_flag_on_compile_verify_and_sample(tmp_path, artifact):
    out = tmp_path / "graphed"
    r = runner.invoke(
        app,
        [
            "compile",
            "--model",
            "DiT-Tiny",
            "--init",
            "random",
            "--nfe",
            "4",
            "--cuda-graph",
            "--device",
            "cpu",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 2 and "needs the model on a CUDA device" in _stderr(r)
    assert "Traceback" not in r.output and not out.exists()

    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["cuda_graph"] = True
    manifest_path.write_text(json.dumps(manifest))
    r = runner.invoke(app, ["verify", str(artifact), "--format", "json"])
    assert r.exit_code == 2 and "cuda_graph=False" in _stderr(r)
    r = runner.invoke(app, ["verify", str(artifact), "--no-cuda-graph", "--format", "json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["ok"] and result["cuda_graph"] is False and result["reference_dtype"] == "float32"
    png = tmp_path / "g.png"
    r = runner.invoke(
        app,
        [
            "sample",
            str(artifact),
            "--no-cuda-graph",
            "--classes",
            "0,1",
            "--latent-preview",
            "-o",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:4] == b"\x89PNG"


# ── CPU: the replay logic with an eager stand-in for the capture ─────────────────────────────
class EagerCapture(cuda_graph.GraphedTrajectory):
    """Runs eagerly into one static output buffer, like a replayed graph; counts captures."""

    captures = 0

    def _capture(self, run, warmup):
        type(self).captures += 1
        static = (self.static_noise, self.static_labels, self.static_scale)
        out = run(*static)
        return out, lambda: out.copy_(run(*static))


@pytest.fixture()
def graphed(monkeypatch):
    """A CPU sampler with ``cuda_graph`` on, capturing through :class:`EagerCapture`."""
    monkeypatch.setattr(runtime, "GraphedTrajectory", EagerCapture)
    for module in (runtime, compiler_module):
        monkeypatch.setattr(module, "check_cuda_graph_device", lambda device: None)
    EagerCapture.captures = 0
    model, plan, sched = _dit_case(1)
    plain = l2c_compile.compile(tiny_dit(1), plan, sched)
    return l2c_compile.compile(model, plan, sched, cuda_graph=True), plain


def test_replay_matches_the_plain_sampler_for_new_inputs(graphed):
    compiled, plain = graphed
    first = None
    for seed, scale in [(0, 4.0), (1, 1.5), (2, torch.tensor([2.5]))]:
        noise, labels = inputs(compiled.model, batch=3, seed=seed)
        got = compiled(noise, labels, scale)
        assert rel_error(got, plain(noise, labels, scale)) <= 1e-6
        if first is None:
            first, kept = got, got.clone()
    assert EagerCapture.captures == 1 and compiled._graph.replays == 3
    # Results are copies: a later replay must not change what an earlier call returned.
    assert torch.equal(first, kept)
    assert first.data_ptr() != compiled._graph.static_out.data_ptr()


def test_another_shape_is_refused_until_reset(graphed):
    compiled, _ = graphed
    noise, labels = inputs(compiled.model, batch=2)
    compiled(noise, labels, 4.0)
    other, other_labels = inputs(compiled.model, batch=5)
    with pytest.raises(
        L2CError,
        match=r"captured for noise \(2, 4, 8, 8\) float32 on cpu, got noise "
        r"\(5, 4, 8, 8\).*reset_cuda_graph\(\)",
    ):
        compiled(other, other_labels, 4.0)
    compiled.reset_cuda_graph()
    assert compiled(other, other_labels, 4.0).shape == other.shape
    assert EagerCapture.captures == 2
    # Half-precision noise is promoted to the float32 state first, so it replays the same graph.
    assert compiled(other.bfloat16(), other_labels, 4.0).dtype == torch.float32
    assert EagerCapture.captures == 2


def test_moving_the_weights_recaptures(graphed):
    compiled, plain = graphed
    noise, labels = inputs(compiled.model)
    compiled(noise, labels, 4.0)
    old = [p.data for p in compiled.model.parameters()]  # keep the old storage from being reused
    compiled.model.double().float()
    assert compiled._graph.stale()
    assert rel_error(compiled(noise, labels, 4.0), plain(noise, labels, 4.0)) <= 1e-6
    assert EagerCapture.captures == 2 and len(old) > 0


# ── GPU: real capture and replay ─────────────────────────────────────────────────────────────
def _cuda_case(model, plan, sched, **kwargs):
    plain = l2c_compile.compile(model, plan, sched, device="cuda", **kwargs)
    graphed = l2c_compile.compile(model, plan, sched, device="cuda", cuda_graph=True, **kwargs)
    return plain, graphed


def _cuda_inputs(model, batch, seed, family="dit"):
    noise, labels = case_inputs(family, model, seed, batch)
    return noise.cuda(), labels.cuda()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("family", DECLARED)
def test_cuda_graph_replay_equals_the_plain_run(family):
    model = case_model(family, 0, width=64)
    plan = case_plan(family, 6)
    layout = family_of(model).layout(model)
    sched = random_schedule(plan, layout.depth, random.Random(0), p=0.7, layout=layout)
    plain, graphed = _cuda_case(model, plan, sched)
    fused = sum(rep["stats"].get("rewrites", 0) for g in graphed.info["graphs"] for rep in g["passes"]
                if rep["name"] == "fuse_reuse")
    if fused:
        assert "torch.ops.l2c." in graphed.source  # the fused Triton epilogues are in the graph
    scale = CASES[family].cfg_scale
    results = []
    for seed in range(3):
        noise, labels = _cuda_inputs(model, 4, seed, family)
        got = graphed(noise, labels, scale)
        results.append((got, got.clone()))
        assert rel_error(got, plain(noise, labels, scale)) <= 1e-6
    assert graphed._graph.replays == 3
    assert all(torch.equal(a, b) for a, b in results)  # outputs are copies, never overwritten
    before = torch.cuda.memory_allocated()
    for _ in range(3):
        graphed(*_cuda_inputs(model, 4, 0, family), scale)
    assert (
        torch.cuda.memory_allocated() <= before + 4 * results[0][0].nbytes
    )  # replays allocate no pools
    with pytest.raises(L2CError, match="captured for noise"):
        graphed(*_cuda_inputs(model, 2, 0, family), scale)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_with_inductor_steps_and_fused_ops():
    torch._dynamo.reset()
    model, plan, sched = _dit_case(2, nfe=6, hidden_size=64)
    plain = l2c_compile.compile(model, plan, sched, device="cuda")
    graphed = l2c_compile.compile(
        model, plan, sched, device="cuda", backend="inductor", cuda_graph=True
    )
    assert "torch.ops.l2c." in graphed.source
    for seed in range(2):
        noise, labels = _cuda_inputs(model, 4, seed)
        assert rel_error(graphed(noise, labels, 4.0), plain(noise, labels, 4.0)) <= 1e-4


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_trajectory_has_no_host_sync(backend):
    """What makes capture safe: after warm-up, the trajectory issues no synchronizing CUDA op.

    The trajectory is what a CUDA graph captures: the generated ``sample`` after the call's
    checks. The checks themselves run once per call outside the graph and may read the labels'
    range (a small device→host read: where the H200 run of 2026-12-04 saw this test's former,
    whole-call version fail).
    """
    torch._dynamo.reset()
    model, plan, sched = _dit_case(3, nfe=4, hidden_size=64)
    compiled = l2c_compile.compile(model, plan, sched, device="cuda", backend=backend)
    noise, labels = _cuda_inputs(model, 2, 0)
    scale = torch.full((), 4.0, device="cuda")
    compiled(noise, labels, scale)  # warm-up: inductor compiles, Triton JITs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad():
            compiled._sample(compiled, noise, labels, scale)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@needs_cuda
def test_bf16_cuda_graph_against_the_fp32_reference():
    model, plan, sched = _dit_case(4, nfe=6, hidden_size=64)
    ref = l2c_compile.compile(tiny_dit(4, hidden_size=64), plan, sched, device="cuda")
    bf16 = l2c_compile.compile(model, plan, sched, device="cuda", dtype="bfloat16", cuda_graph=True)
    noise, labels = _cuda_inputs(model, 4, 0)
    got = bf16(noise, labels, 4.0)
    assert got.dtype == torch.float32
    assert rel_error(got, ref(noise, labels, 4.0)) <= 5e-2


@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_artifact_round_trip_and_verify(artifact):
    from l2c_compile.runtime.verify import verify_artifact

    loaded = l2c_compile.load(artifact, device="cuda", cuda_graph=True)
    noise, labels = _cuda_inputs(loaded.model, 2, 0)
    plain = l2c_compile.load(artifact, device="cuda")
    assert rel_error(loaded(noise, labels, 4.0), plain(noise, labels, 4.0)) <= 1e-6
    result = verify_artifact(artifact, device="cuda", cuda_graph=True)
    # Fused Triton epilogues vs the reference's torch ops: fp32 rounding differences only.
    assert result.cuda_graph is True and result.max_rel_error <= 1e-4


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_regional_backend_inside_the_trajectory_cuda_graph(dtype):
    """Issue 24: the sublayers compiled once per kind by inductor, captured in one CUDA graph."""
    torch._dynamo.reset()
    model, plan, sched = _dit_case(5, nfe=6, hidden_size=64)
    plain = l2c_compile.compile(model, plan, sched, device="cuda", dtype=dtype)
    regional = l2c_compile.compile(model, plan, sched, device="cuda", dtype=dtype, backend="regional")
    graphed = l2c_compile.compile(
        model, plan, sched, device="cuda", dtype=dtype, backend="regional", cuda_graph=True
    )
    tol = 1e-4 if dtype == "float32" else 2e-2
    for seed in range(2):
        noise, labels = _cuda_inputs(model, 4, seed)
        want = plain(noise, labels, 4.0)
        assert rel_error(regional(noise, labels, 4.0), want) <= tol
        assert rel_error(graphed(noise, labels, 4.0), want) <= tol
    assert graphed._graph.replays >= 1
