"""PixArt (text-to-image): three sublayer kinds per block, DPM-Solver++ 2M, compile_pipeline.

Tiny random PixArtTransformer2DModel / AutoencoderKL / T5EncoderModel built from configs; the
prompt embeddings stand in for the tokenizer except where a test encodes real words with the
in-memory tokenizer of ``tests/diffusers_helpers.py``.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2c_compile.compiler import reference
from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers import compile_pipeline, load_diffusers, load_pipeline, pipeline_plan
from l2c_compile.diffusers.pixart import DiffusersPixArt, pack_condition
from l2c_compile.errors import L2CError
from l2c_compile.families.vocabulary import kinds
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule, heuristic
from tests.diffusers_helpers import (
    TEXT_LEN,
    prompt_inputs,
    tiny_pixart_pipeline,
    tiny_pixart_transformer,
)
from tests.helpers import rel_error

THREE = ("attn", "cross", "mlp")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pixart_pipeline(0)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# Three kinds per block: schedules, compiled vs reference
# ---------------------------------------------------------------------------------------------


def _random_three_kind(plan, depth: int, rng: random.Random, p: float) -> Schedule:
    logits = torch.tensor(
        [
            [rng.choice([-3.0, 3.0]) if rng.random() < p else 3.0 for _ in range(3 * depth)]
            for _ in range(plan.nfe)
        ]
    )
    return Schedule.from_router(
        logits, plan, model="pixart-tiny", depth=depth, threshold=0.5, kinds=THREE
    )


def test_three_kind_schedule_document_round_trips_and_two_kind_documents_do_not_change():
    plan = make_plan("dpm-solver++", 6)
    s = heuristic("random", plan, model="pixart-tiny", depth=3, fraction=0.5, kinds=THREE)
    assert s.kinds == THREE == tuple(k for k in kinds() if k in THREE)  # vocabulary order
    text = s.to_json()
    assert '"kinds": ["attn", "cross", "mlp"]' in text and '"reuse_cross"' in text
    assert Schedule.from_json(text) == s and Schedule.from_json(text).to_json() == text
    stats = s.stats()
    assert stats["total_cache_sublayers"] == 3 * 3 * len(s.cache_calls)
    assert (
        stats["skipped_attn"] + stats["skipped_cross"] + stats["skipped_mlp"]
        == stats["skipped_total"]
        > 0
    )
    two = heuristic("random", plan, model="DiT-Tiny", depth=3, fraction=0.5)
    assert '"kinds"' not in two.to_json() and '"reuse_cross"' not in two.to_json()
    assert all(len(c.mask) == 2 for c in two.calls)
    with pytest.raises(L2CError, match="has 9 entries per step but pixart-tiny has 3 blocks of 2"):
        Schedule.from_router(torch.zeros(6, 9), plan, model="pixart-tiny", depth=3, threshold=0.5)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), p=st.floats(0.2, 0.9), cfg=st.booleans())
def test_compiled_equals_reference_under_random_three_kind_schedules(seed, p, cfg):
    model = DiffusersPixArt(tiny_pixart_transformer(1), text_len=TEXT_LEN)
    plan = make_plan("dpm-solver++", 6)
    sched = _random_three_kind(plan, 2, random.Random(seed), p)
    inputs = prompt_inputs(2, seed)
    y = pack_condition(inputs["prompt_embeds"], inputs["prompt_attention_mask"])
    if cfg:
        y = torch.stack(
            [
                y,
                pack_condition(
                    inputs["negative_prompt_embeds"], inputs["negative_prompt_attention_mask"]
                ),
            ],
            dim=1,
        )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    scale = 4.5 if cfg else None
    want = reference.sample(model, plan, sched, noise, y, scale)
    sampler = compile_sampler(model, plan, sched, cfg=cfg)
    assert rel_error(sampler(noise, y, scale), want) <= 1e-5
    reused = sum(len(ids) for c in sched.calls for ids in c.mask)
    if reused:  # the cache engaged: the result is not the uncached one
        assert not torch.equal(want, reference.sample(model, plan, None, noise, y, scale))


def test_three_kinds_are_declared_by_module_path_and_found_in_the_graph():
    model = DiffusersPixArt(tiny_pixart_transformer(0), text_len=TEXT_LEN)
    plan = make_plan("dpm-solver++", 4)
    sampler = compile_sampler(
        model, plan, Schedule.all_compute("pixart-tiny", 2, plan, kinds=THREE), cfg=True
    )
    marked = sampler.info["trace"][0]["stats"]
    assert marked == {"sublayers": 6, "gated": 4}  # attn1 and ff gated by adaLN-single, attn2 not
    assert "cross-attention computed" in sampler.source
    with pytest.raises(
        L2CError, match=r"covers sublayer kinds \['attn', 'mlp'\], this model's blocks have"
    ):
        compile_sampler(model, plan, Schedule.all_compute("pixart-tiny", 2, plan), cfg=True)


def test_heatmap_grid_and_macs_take_three_kinds(tmp_path):
    pytest.importorskip("matplotlib")
    from l2c_compile.metrics.macs import module_macs, trajectory_macs
    from l2c_compile.schedule.render import heatmap_figure, render_grid

    plan = make_plan("dpm-solver++", 6)
    s = heuristic("top", plan, model="pixart-tiny", depth=2, fraction=0.5, kinds=THREE)
    grid = render_grid(s)
    assert grid.splitlines()[0].split()[-2:] == ["0", "1"]
    assert grid.splitlines()[1].endswith("... axm")  # the top 3 of 6 entries: all of block 1
    assert len(heatmap_figure(s).axes) == 3
    model = DiffusersPixArt(tiny_pixart_transformer(0), text_len=TEXT_LEN)
    count = module_macs(
        model, torch.zeros(1, 4, 8, 8), torch.zeros(1), model.example_condition(1, False, "cpu")
    )
    tokens, text, d = 16, TEXT_LEN, 16  # 8×8 latent in 2×2 patches; width 16 (2 heads of 8)
    assert count.of("attn") == 4 * tokens * d * d  # to_q, to_k, to_v, to_out on the image tokens
    assert (
        count.of("cross") == 2 * tokens * d * d + 2 * text * d * d
    )  # to_q, to_out on the image; to_k, to_v on the text
    assert count.of("mlp") == 2 * tokens * d * 4 * d  # 16 → 64 → 16
    full, cached = trajectory_macs((count, 2), s)
    saved = sum(
        len(c.reused("attn")) * count.of("attn")
        + len(c.reused("cross")) * count.of("cross")
        + len(c.reused("mlp")) * count.of("mlp")
        for c in s.calls
    )
    assert saved > 0
    assert full == 6 * count.total and cached == full - saved


# ---------------------------------------------------------------------------------------------
# The pipeline drop-in
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("guidance", "steps"), [(4.5, 10), (1.0, 5)])
def test_all_compute_reproduces_the_pipeline(pipe, guidance, steps):
    compiled = compile_pipeline(pipe, None)
    kw = dict(
        **prompt_inputs(2),
        negative_prompt=None,
        guidance_scale=guidance,
        num_inference_steps=steps,
        use_resolution_binning=False,
    )
    for output_type in ("np", "latent"):
        want = pipe(
            generator=torch.Generator().manual_seed(1), output_type=output_type, **kw
        ).images
        got = compiled(
            generator=torch.Generator().manual_seed(1), output_type=output_type, **kw
        ).images
        assert got.shape == want.shape
        assert _rel(got, want) <= 1e-5


def test_prompts_are_encoded_by_the_pipelines_own_encoder(pipe):
    compiled = compile_pipeline(pipe)
    kw = dict(
        prompt=["a red cat", "the big blue house"],
        num_inference_steps=4,
        output_type="np",
        use_resolution_binning=False,
        max_sequence_length=TEXT_LEN,
        num_images_per_prompt=2,
    )
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    got = compiled(generator=torch.Generator().manual_seed(0), **kw).images
    assert got.shape == (4, 8, 8, 3) and _rel(got, want) <= 1e-5
    pil = compiled(prompt="a dog", num_inference_steps=2, use_resolution_binning=False).images
    assert type(pil[0]).__name__ == "Image"


def test_a_schedule_runs_the_cache_and_mismatches_are_one_line(pipe):
    plan = pipeline_plan(pipe.scheduler, 6)
    sched = _random_three_kind(plan, 2, random.Random(3), 0.8)
    compiled = compile_pipeline(pipe, sched)
    kw = dict(
        **prompt_inputs(1),
        negative_prompt=None,
        num_inference_steps=6,
        use_resolution_binning=False,
        output_type="latent",
    )
    cached = compiled(generator=torch.Generator().manual_seed(0), **kw).images
    uncached = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert not torch.allclose(cached, uncached, atol=1e-6)
    with pytest.raises(
        L2CError, match=r"schedule is for dpm-solver\+\+ with 6 NFE.*num_inference_steps=7$"
    ):
        compiled(**{**kw, "num_inference_steps": 7})
    with pytest.raises(L2CError, match="resolution binning has no table for sample_size 8"):
        compiled(**{**kw, "use_resolution_binning": True})
    with pytest.raises(L2CError, match="square images only"):
        compiled(**{**kw, "height": 8, "width": 16})
    with pytest.raises(L2CError, match="Cannot forward both `negative_prompt`"):
        compiled(**{**kw, "negative_prompt": "x"})


def test_saved_pipeline_loads_offline_and_compiles(tmp_path, pipe):
    pipe.save_pretrained(tmp_path / "pixart")
    loaded = load_pipeline(tmp_path / "pixart")
    assert type(loaded).__name__ == "PixArtAlphaPipeline"
    model = load_diffusers(tmp_path / "pixart")
    assert (
        isinstance(model, DiffusersPixArt) and model.text_len == 120
    )  # PixArt-α's max_sequence_length
    kw = dict(
        **prompt_inputs(1),
        negative_prompt=None,
        num_inference_steps=3,
        use_resolution_binning=False,
        output_type="latent",
    )
    want = pipe(generator=torch.Generator().manual_seed(0), **kw).images
    got = compile_pipeline(loaded)(generator=torch.Generator().manual_seed(0), **kw).images
    assert _rel(got, want) <= 1e-5


def test_sigma_pipeline_is_supported():
    sigma = tiny_pixart_pipeline(2, sigma=True)
    kw = dict(
        **prompt_inputs(1),
        negative_prompt=None,
        num_inference_steps=4,
        use_resolution_binning=False,
        output_type="latent",
    )
    want = sigma(generator=torch.Generator().manual_seed(0), **kw).images
    got = compile_pipeline(sigma)(generator=torch.Generator().manual_seed(0), **kw).images
    assert _rel(got, want) <= 1e-5


def test_three_kind_router_files_save_load_and_import(tmp_path):
    from l2c_compile.schedule import import_router
    from l2c_compile.schedule.router_files import load_router, save_router

    plan = make_plan("dpm-solver++", 6)
    logits = torch.randn(6, 3 * 2, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "r.safetensors"
    save_router(
        path,
        logits,
        {"model": "pixart-tiny", "sampler": "dpm-solver++", "nfe": 6, "sublayers": list(THREE)},
    )
    router = load_router(path)
    assert router.kinds == THREE and router.depth == 2 and torch.equal(router.logits, logits)
    sched = import_router(path, plan, model="pixart-tiny", depth=2, threshold=0.5, kinds=THREE)
    assert sched == Schedule.from_router(
        logits, plan, model="pixart-tiny", depth=2, threshold=0.5, kinds=THREE, source=sched.source
    )
    with pytest.raises(
        L2CError, match=r"router covers sublayers \['attn', 'cross', 'mlp'\] but the model has"
    ):
        import_router(path, plan, model="pixart-tiny", depth=3, threshold=0.5)


# ---------------------------------------------------------------------------------------------
# The CLI from a saved folder
# ---------------------------------------------------------------------------------------------


def test_cli_schedule_compile_verify_sample_with_a_prompt(tmp_path, pipe):
    import json

    from typer.testing import CliRunner

    from l2c_compile.cli.main import app

    def run(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    folder = tmp_path / "pixart"
    pipe.save_pretrained(folder)
    sched, art, png = tmp_path / "s.json", tmp_path / "art", tmp_path / "x.png"
    r = run(
        "schedule",
        "heuristic",
        "--diffusers",
        folder,
        "--nfe",
        6,
        "--kind",
        "random",
        "--fraction",
        0.5,
        "-o",
        sched,
        "--format",
        "json",
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(sched.read_text())
    assert doc["kinds"] == list(THREE) and doc["sampler"] == "dpm-solver++"
    r = run(
        "compile",
        "--diffusers",
        folder,
        "--nfe",
        6,
        "--schedule",
        sched,
        "-o",
        art,
        "--format",
        "json",
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["diffusers_class"] == "PixArtTransformer2DModel"
    assert manifest["model"]["pixart"]["text_len"] == 120
    r = run("verify", art, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_rel_error"] <= 1e-5
    r = run(
        "sample",
        art,
        "--prompt",
        "a red cat",
        "--prompt",
        "the big house",
        "--diffusers",
        folder,
        "-o",
        png,
    )
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for args, message in [
        ((), "this artifact draws from text: pass --prompt TEXT and --diffusers DIR"),
        (("--prompt", "a cat"), "--prompt needs --diffusers DIR"),
        (
            ("--prompt", "a cat", "--diffusers", folder / "vae"),
            "is not a diffusers pipeline folder",
        ),
    ]:
        r = run("sample", art, *args, "-o", tmp_path / "y.png")
        assert r.exit_code != 0 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "y.png").exists()


# ---------------------------------------------------------------------------------------------
# Routers from prompts
# ---------------------------------------------------------------------------------------------


def test_prompt_driven_training_learns_one_logit_per_step_block_and_kind(tmp_path, pipe):
    import json

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from l2c_compile.cli.main import app
    from l2c_compile.router.objective import initial_logits
    from l2c_compile.schedule.router_files import load_router

    folder = tmp_path / "pixart"
    pipe.save_pretrained(folder)
    inputs = prompt_inputs(3, seed=5)
    embeds = tmp_path / "embeds.safetensors"
    save_file(
        {
            "prompt_embeds": inputs["prompt_embeds"],
            "prompt_attention_mask": inputs["prompt_attention_mask"],
            "negative_prompt_embeds": inputs["negative_prompt_embeds"][:1].contiguous(),
            "negative_prompt_attention_mask": inputs["negative_prompt_attention_mask"][
                :1
            ].contiguous(),
        },
        embeds,
    )
    text = tmp_path / "prompts.txt"
    text.write_text("a red cat\n\nthe big blue house\n", encoding="utf-8")
    for prompts, folder_arg in ((embeds, folder / "transformer"), (text, folder)):
        out = tmp_path / f"{prompts.stem}.safetensors"
        r = CliRunner().invoke(
            app,
            [
                "train",
                "--diffusers",
                str(folder_arg),
                "--prompts",
                str(prompts),
                "--nfe",
                "6",
                "--steps",
                "6",
                "--batch-size",
                "2",
                "--pool-size",
                "4",
                "--lam",
                "1.0",
                "--lr",
                "0.1",
                "-o",
                str(out),
                "--format",
                "json",
            ],
            catch_exceptions=False,
        )
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["trained_rows"] == [0, 2, 4] and np.isfinite(summary["final_loss"])
        router = load_router(out)
        assert router.kinds == THREE and router.logits.shape == (6, 3 * 2)
        init = initial_logits(6, 2, 0, 3)
        trained = [0, 2, 4]
        untrained = [1, 3, 5]
        assert torch.equal(router.logits[untrained], init[untrained])
        # λ = 1 outweighs the tiny model's distillation error: every trained logit moved down
        assert (router.logits[trained] < init[trained]).all()
    bad = CliRunner().invoke(
        app,
        [
            "train",
            "--diffusers",
            str(folder / "transformer"),
            "--prompts",
            str(text),
            "--nfe",
            "6",
            "-o",
            str(tmp_path / "x.safetensors"),
        ],
    )
    assert bad.exit_code != 0 and "model folder without a text encoder" in bad.output
    bad = CliRunner().invoke(
        app, ["train", "--diffusers", str(folder), "--nfe", "6", "-o", str(tmp_path / "x.st")]
    )
    assert bad.exit_code != 0 and "pass --prompts FILE" in bad.output


def test_pixart_needs_the_export_capture_as_diffusers_dit_does():
    from l2c_compile.compiler.passes.base import CompileError
    from l2c_compile.compiler.passes.trace import export_step, fx_step

    model = DiffusersPixArt(tiny_pixart_transformer(0), text_len=TEXT_LEN)
    with pytest.raises(CompileError, match=r"cannot trace DiffusersPixArt with torch\.fx"):
        fx_step(model, cfg=True)
    gm = export_step(model, cfg=True)
    assert sorted(k for k, _ in gm.meta["l2c_sublayer_paths"]) == sorted(THREE * 2)


def test_shipped_and_released_routers_stay_two_kind():
    from pathlib import Path

    from l2c_compile.schedule.router_files import load_router

    shipped = sorted(
        (Path(__file__).resolve().parents[1] / "l2c_compile/assets/routers").glob("*.safetensors")
    )
    assert shipped
    for path in shipped:
        router = load_router(path)
        assert router.kinds == ("attn", "mlp") and router.depth * 2 == router.logits.shape[1], (
            path.name
        )


def test_generated_code_reads_like_the_diffusers_forward():
    """Export capture: names from the processor's and the block's own lines, no identities left,
    fused reuses say what they add, caches travel by name; and it still equals the reference."""
    from tests.test_codegen import assert_reads_like_a_forward, reusing

    model = DiffusersPixArt(tiny_pixart_transformer(0), text_len=TEXT_LEN)
    plan = make_plan("dpm-solver++", 6)
    sched = reusing(plan, 2, {1}, kinds=THREE)
    sampler = compile_sampler(model, plan, sched, cfg=True)
    src = sampler.source
    assert_reads_like_a_forward(src)
    full = src[src.index("def step_0("):src.index("def step_1(")]
    assert "b0_shift_msa, b0_scale_msa, b0_gate_msa, b0_shift_mlp, b0_scale_mlp, b0_gate_mlp = " in full
    for name, module in (("query", "attn1.to_q"), ("key_2", "attn1.to_k"), ("value_2", "attn1.to_v")):
        assert f"b0_{name} = F.linear(b0_norm_hidden_states, m.transformer.transformer_blocks[0].{module}." in full
    assert "b0_attn = F.linear(" in full and "b0_cross = F.linear(" in full  # `/ 1.0` folded away
    cache = src[src.index("def step_1("):src.index("STEPS = ")]
    assert "b1_query = " not in cache and "m.transformer.transformer_blocks[1].attn1" not in cache  # no dead attention
    assert "cache_attn_1=attn_1, cache_cross_1=cross_1, cache_mlp_1=mlp_1)" in src
    inputs = prompt_inputs(2, 0)
    y = torch.stack([pack_condition(inputs["prompt_embeds"], inputs["prompt_attention_mask"]),
                     pack_condition(inputs["negative_prompt_embeds"], inputs["negative_prompt_attention_mask"])], dim=1)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    want = reference.sample(model, plan, sched, noise, y, 4.5)
    assert rel_error(sampler(noise, y, 4.5), want) <= 1e-5
