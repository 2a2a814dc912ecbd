"""The hoist pass: what the trajectory fixes runs once per call in a prologue before step 0.

Detection is from the graph (no model class is named in the pass); each family's compiled sampler
with the prologue equals the reference executor under random schedules; the report, the memory
limit, ``hoist=False``, the generated code, artifacts, bf16, the backends and the CUDA-graph path.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import l2c_compile
from l2c_compile.compiler import reference
from l2c_compile.compiler.passes.analysis import propagate_shapes
from l2c_compile.compiler.passes.base import CompileError
from l2c_compile.compiler.passes.hoist import (
    HOIST_META,
    PROLOGUE_META,
    HoistConfig,
    classify,
    hoist,
)
from l2c_compile.compiler.passes.manager import check_invariants
from l2c_compile.compiler.passes.trace import trace_step
from l2c_compile.families import family_of
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule
from tests.families import CASES, DECLARED, case_inputs, case_model, case_plan, params
from tests.helpers import inputs, random_schedule, rel_error, tiny_dit, tiny_uvit

SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROLOGUE_LINE = "# prologue: computed once per call, before step 0"
HOIST_FAMILIES = params(slow_exported="many captures per family (minutes on CPU); the contract and "
                        "all-compute tests below hoist them by default")


def _ddim(nfe: int):
    return make_plan("ddim", nfe, noise_schedule="linear", time_input="discrete")


def _dpm(nfe: int):
    return make_plan("dpm-solver-2", nfe, noise_schedule="scaled_linear", time_input="continuous")


def _hoisted_base(model, steps: int = 4, limit: int = 2**30):
    gm = trace_step(model, cfg=True)
    p = next(model.parameters())
    c, s = model.in_channels, model.input_size
    propagate_shapes(gm, [torch.zeros(1, c, s, s), torch.zeros(1), torch.zeros(1, dtype=torch.long),
                          torch.ones(())])
    assert p.dtype == torch.float32
    return hoist(gm, HoistConfig(steps=steps, rows_per_image=2, limit_bytes=limit))


def _step_sources(source: str) -> str:
    """The generated step functions only (not the prologue, not the loop)."""
    start = source.index("def step_0(")
    return source[start:source.index("STEPS = (")]


def _prologue_source(source: str) -> str:
    return source[source.index("def prologue("):source.index("def step_0(")]


# ── detection, from the graph ────────────────────────────────────────────────────────────────
def test_dit_prologue_holds_the_embeddings_and_every_adaln_and_nothing_latent():
    depth, hidden = 3, 32
    result = _hoisted_base(tiny_dit(0, depth=depth, hidden_size=hidden), steps=5)
    gm, stats = result.gm, result.stats
    prologue = gm.meta[PROLOGUE_META]
    # t_embedder's two linears, one adaLN linear per block and the final layer's
    assert stats["gemms"] == stats["gemms_batched_over_steps"] == 2 + depth + 1
    assert prologue.names == (*(f"b{b}_adaLN_modulation" for b in range(depth)), "final_layer_adaLN_modulation")
    assert all(prologue.per_step)
    # bytes: 5 steps × 2 rows (CFG) × (6 per block + 2 final) × hidden × 4 bytes
    assert stats["bytes_per_image"] == 5 * 2 * (6 * depth + 2) * hidden * 4
    kinds = classify(gm)
    ph = {n.target: n for n in prologue.gm.graph.nodes if n.op == "placeholder"}
    assert set(ph) == {"t", "y"}  # the prologue never sees the latents
    targets = {str(n.target) for n in prologue.gm.graph.nodes if n.op == "call_module"}
    assert not any(".attn." in t or ("blocks" in t and ".mlp." in t) or "x_embedder" in t for t in targets)
    hoisted = [n for n in gm.graph.nodes if n.op == "placeholder" and HOIST_META in n.meta]
    assert [n.meta[HOIST_META] for n in hoisted] == list(prologue.names)
    # what stays in the step graph and depends on t / y alone is no real work (views, sizes)
    assert not [n for n in gm.graph.nodes if kinds[n] == "cond" and n.op in ("call_module", "get_attr")]
    step_modules = {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}
    assert not any("adaLN_modulation" in t or "t_embedder" in t or "y_embedder" in t for t in step_modules)
    check_invariants(gm)


def test_uvit_time_token_is_hoisted_through_its_dtype_cast():
    result = _hoisted_base(tiny_uvit(0, depth=2, mlp_time_embed=True))
    prologue = result.gm.meta[PROLOGUE_META]
    # the time token depends on t (one per step); the label token on the label only (once)
    assert dict(zip(prologue.names, prologue.per_step, strict=True)) == {"time_token": True, "label_emb": False}
    assert result.stats["gemms"] == result.stats["gemms_batched_over_steps"] == 2  # time_embed's MLP


def test_a_hoisted_input_nobody_reads_breaks_an_invariant():
    gm = _hoisted_base(tiny_dit(0, depth=1)).gm
    ph = next(n for n in gm.graph.nodes if n.op == "placeholder" and HOIST_META in n.meta)
    for user in list(ph.users):
        user.replace_input_with(ph, next(n for n in gm.graph.nodes if n.op == "placeholder" and n.target == "t"))
    with pytest.raises(CompileError, match=r"hoisted input .* is never read"):
        check_invariants(gm)


# ── exactness, every family ──────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("family", HOIST_FAMILIES)
@settings(SETTINGS, max_examples=2)  # per family (it drew 4 over two families before)
@given(cfg=st.booleans(), nfe=st.integers(2, 6), p=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_hoisted_sampler_equals_the_reference_and_the_unhoisted_one(family, cfg, nfe, p, seed):
    case = CASES[family]
    model = case_model(family, seed, depth=2, **case.variants[seed % len(case.variants)])
    plan = case_plan(family, nfe)
    layout = family_of(model).layout(model)
    sched = random_schedule(plan, layout.depth, random.Random(seed), p, layout=layout)
    hoisted = l2c_compile.compile(model, plan, sched, cfg=cfg)
    plain = l2c_compile.compile(model, plan, sched, cfg=cfg, hoist=False)
    assert hoisted.info["hoisted"]["outputs"] > 0 and PROLOGUE_LINE in hoisted.source
    assert "def prologue(" not in plain.source and plain.info["hoisted"] is None
    noise, labels = case_inputs(family, model, seed, 2)
    labels = labels if cfg else case.unguided(labels)
    scale = case.cfg_scale if cfg else None
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(hoisted(noise, labels, scale), want) <= 1e-5
    assert rel_error(plain(noise, labels, scale), want) <= 1e-5


@pytest.mark.parametrize("family", DECLARED)
def test_hoisted_all_compute_equals_the_uncached_model(family):
    case = CASES[family]
    model = case_model(family, 1, **case.variants[-1])
    plan = case_plan(family, 6)
    layout = family_of(model).layout(model)
    sched = Schedule.all_compute("test", layout.depth, plan, kinds=layout)
    compiled = l2c_compile.compile(model, plan, sched)
    assert compiled.info["hoisted"]["outputs"] > 0
    noise, labels = case_inputs(family, model)
    want = reference.sample_uncached(model, plan, noise, labels, case.cfg_scale)
    assert rel_error(compiled(noise, labels, case.cfg_scale), want) <= 1e-6


# ── the generated code ───────────────────────────────────────────────────────────────────────
def test_generated_code_has_a_named_prologue_and_steps_read_their_slices():
    model = tiny_dit(2, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(3), 0.5)
    src = l2c_compile.compile(model, plan, sched).source
    assert PROLOGUE_LINE in src
    assert "torch.vmap(self.prologue, in_dims=(0, None)" in src
    prologue = _prologue_source(src)
    assert "b0_adaLN_modulation = m.blocks[0].adaLN_modulation(c)" in prologue
    steps = _step_sources(src)
    assert "adaLN_modulation(" not in steps and "t_embedder" not in steps and "y_embedder" not in steps
    assert "b1_adaLN_modulation.chunk(6, dim=1)" in steps
    loop = src[src.index("def sample("):]
    for row in range(4):  # call i reads row i (four distinct timesteps)
        assert f"b0_adaLN_modulation[{row}]" in loop
    # liveness: each hoisted tensor is deleted right after the last call that reads it
    last = loop.rindex("b0_adaLN_modulation[3]")
    dels = [i for i in range(len(loop)) if loop.startswith("del ", i) and "b0_adaLN_modulation" in
            loop[i:loop.index("\n", i)]]
    assert len(dels) == 1 and dels[0] > last


# ── report, limit, off switch ────────────────────────────────────────────────────────────────
def test_over_the_memory_limit_the_pass_is_skipped_with_one_line():
    model = tiny_dit(0, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(0), 0.5)
    compiled = l2c_compile.compile(model, plan, sched, hoist_limit_bytes=1000)
    stats = compiled.info["hoisted"]
    assert stats["bytes_per_image"] > 1000
    assert stats["skipped"].startswith("hoisting skipped: the hoisted tensors would hold ")
    assert "hoist_limit_bytes" in stats["skipped"] and "\n" not in stats["skipped"]
    assert "def prologue(" not in compiled.source
    from l2c_compile.runtime.verify import compile_summary

    assert compile_summary(compiled.record)["hoist"] == stats["skipped"]
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-5
    from l2c_compile.errors import L2CError

    with pytest.raises(L2CError, match="hoist_limit_bytes"):
        l2c_compile.compile(model, plan, sched, hoist_limit_bytes=-1)


def test_compile_report_counts_what_moved_and_macs_include_the_prologue():
    model = tiny_dit(0, depth=2)
    plan = _ddim(4)
    compiled = l2c_compile.compile(model, plan, None)
    plain = l2c_compile.compile(model, plan, None, hoist=False)
    stats = compiled.info["hoisted"]
    hoist_pass = next(r for r in compiled.info["trace"] if r["name"] == "hoist")
    assert hoist_pass["modified"] and hoist_pass["stats"]["gemms"] == stats["gemms"] == 5
    # all-compute: the prologue does the same multiply-adds the steps did, in one batch
    assert compiled.info["macs_per_image"] == plain.info["macs_per_image"]
    assert stats["macs_per_image"] > 0
    from l2c_compile.runtime.verify import compile_summary

    line = compile_summary(compiled.record)["hoist"]
    assert line.startswith(f"{stats['nodes']} nodes, 5 GEMMs (5 batched over 4 timesteps) into the prologue")
    assert compile_summary(plain.record)["hoist"] == "off"


def test_cli_compile_reports_hoisting_and_takes_no_hoist_and_the_limit(tmp_path):
    from typer.testing import CliRunner

    from l2c_compile.cli.main import app

    runner = CliRunner()
    base = ["compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", "4", "--format", "json"]
    r = runner.invoke(app, [*base, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "GEMMs" in json.loads(r.output)["hoist"]
    r = runner.invoke(app, [*base, "--no-hoist", "-o", str(tmp_path / "b")])
    assert r.exit_code == 0 and json.loads(r.output)["hoist"] == "off"
    r = runner.invoke(app, [*base, "--hoist-limit", "0", "-o", str(tmp_path / "c")])
    assert r.exit_code == 0 and json.loads(r.output)["hoist"].startswith("hoisting skipped")
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["hoist"] is True and manifest["hoist_limit_bytes"] == 0
    loaded = l2c_compile.load(tmp_path / "c")  # the limit is part of what load regenerates
    assert "def prologue(" not in loaded.source
    r = runner.invoke(app, [*base, "--hoist-limit", "-1", "-o", str(tmp_path / "d")])
    assert r.exit_code == 2 and not (tmp_path / "d").exists()


@pytest.mark.parametrize("hoist_on", [True, False])
def test_artifacts_round_trip_with_and_without_the_prologue(tmp_path, hoist_on):
    from l2c_compile.models.registry import build_model, get_spec, init_random

    spec = get_spec("DiT-Tiny")
    model = init_random(build_model(spec), 4)
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, len(model.transformer_blocks()), random.Random(4), 0.5, model=spec.name)
    compiled = l2c_compile.compile(model, plan, sched, hoist=hoist_on, model_info=spec.to_dict())
    compiled.save(tmp_path / "art")
    loaded = l2c_compile.load(tmp_path / "art")
    assert loaded.source == compiled.source and loaded.info["hoist"] is hoist_on
    noise, labels = inputs(model)
    assert torch.equal(loaded(noise, labels, 4.0), compiled(noise, labels, 4.0))


# ── precision, backends, CUDA-graph path ─────────────────────────────────────────────────────
def test_bf16_prologue_matches_the_unhoisted_bf16_sampler():
    model = tiny_dit(5, depth=2)
    plan = _ddim(6)
    sched = random_schedule(plan, 2, random.Random(5), 0.5)
    hoisted = l2c_compile.compile(model, plan, sched, dtype="bfloat16")
    plain = l2c_compile.compile(model, plan, sched, dtype="bfloat16", hoist=False)
    assert hoisted.info["hoisted"]["outputs"] > 0
    # bytes are counted in the model's dtype: half the float32 figure
    fp32 = l2c_compile.compile(model, plan, sched).info["hoisted"]["bytes_per_image"]
    assert hoisted.info["hoisted"]["bytes_per_image"] * 2 == fp32
    noise, labels = inputs(model)
    assert rel_error(hoisted(noise, labels, 4.0), plain(noise, labels, 4.0)) <= 2e-2


@pytest.mark.parametrize("backend", ["inductor", "regional"])
def test_compiled_backends_run_the_prologue(backend):
    torch._dynamo.reset()
    model = tiny_dit(6, depth=2)
    plan = _ddim(4)
    sched = random_schedule(plan, 2, random.Random(6), 0.5)
    compiled = l2c_compile.compile(model, plan, sched, backend=backend)
    assert compiled.prologue is not None
    noise, labels = inputs(model)
    want = reference.sample(model, plan, sched, noise, labels, 4.0)
    assert rel_error(compiled(noise, labels, 4.0), want) <= 1e-4  # oneDNN vs MKL reassociation


def test_the_prologue_runs_inside_the_captured_trajectory(monkeypatch):
    """With ``cuda_graph=True`` the whole ``sample`` — prologue included — is what gets captured."""
    from l2c_compile.compiler import driver as compiler_module
    from l2c_compile.runtime import cuda_graph
    from l2c_compile.runtime import sampler as runtime

    seen = []

    class RecordingCapture(cuda_graph.GraphedTrajectory):
        def _capture(self, run, warmup):
            calls = []
            sampler = run.__closure__[0].cell_contents if run.__closure__ else None
            original = sampler.prologue
            sampler.prologue = lambda *a: (calls.append(1), original(*a))[1]
            try:
                out = run(self.static_noise, self.static_labels, self.static_scale)
            finally:
                sampler.prologue = original
            seen.append(len(calls))
            return out, lambda: None

    monkeypatch.setattr(runtime, "GraphedTrajectory", RecordingCapture)
    for module in (runtime, compiler_module):
        monkeypatch.setattr(module, "check_cuda_graph_device", lambda device: None)
    model = tiny_dit(7, depth=2)
    plan = _ddim(4)
    compiled = l2c_compile.compile(model, plan, None, cuda_graph=True)
    noise, labels = inputs(model)
    compiled(noise, labels, 4.0)
    assert seen == [1]  # captured once, and the capture ran the prologue once (vmapped over steps)


# ── the diffusers families ───────────────────────────────────────────────────────────────────
@SETTINGS
@given(seed=st.integers(0, 10_000), p=st.floats(0.0, 1.0), cfg=st.booleans())
def test_diffusers_dit_hoists_each_blocks_timestep_embedding_batched(seed, p, cfg):
    pytest.importorskip("diffusers")
    from l2c_compile.diffusers import DiffusersDiT
    from tests.diffusers_helpers import tiny_transformer

    model = DiffusersDiT(tiny_transformer(seed % 7, layers=2))
    plan = make_plan("ddim", 4)
    sched = random_schedule(plan, 2, random.Random(seed), p)
    compiled = l2c_compile.compile(model, plan, sched, cfg=cfg)
    stats = compiled.info["hoisted"]
    # per block: timestep MLP (2 linears) and the adaLN linear; the output layer embeds the timestep
    # again (block 0's embedder) before proj_out_1: all batched over the 4 timesteps
    assert stats["gemms"] == stats["gemms_batched_over_steps"] == 2 * 3 + 3
    assert "norm1.emb" not in _step_sources(compiled.source)
    noise, labels = inputs(model, 2, seed)
    scale = 4.0 if cfg else None
    want = reference.sample(model, plan, sched, noise, labels, scale)
    assert rel_error(compiled(noise, labels, scale), want) <= 1e-5
