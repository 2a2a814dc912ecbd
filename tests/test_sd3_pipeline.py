"""compile_pipeline for ``StableDiffusion3Pipeline``: the drop-in reproduces ``pipe(...)``, runs a
schedule's cache, and refuses what it cannot do in one line.

Tiny random pipelines built offline (``tests/diffusers_helpers.py``): the SD3.5-shaped transformer
(second attention in block 0, a context_pre_only last block), a one-level VAE with SD3's
``scaling_factor`` / ``shift_factor``, two tiny CLIP text encoders with projection, a tiny T5 and
in-memory tokenizers, and the flow-matching Euler scheduler (static shift 3, or dynamic shifting).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import DDIMScheduler, UniPCMultistepScheduler

from l2c_compile.compiler import reference
from l2c_compile.diffusers import compile_pipeline, pipeline_plan
from l2c_compile.diffusers.pipelines import PIPELINES, CompiledSD3Pipeline
from l2c_compile.diffusers.sd3 import DiffusersSD3, pack_condition
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of, get_family
from l2c_compile.schedule import heuristic
from tests.diffusers_helpers import (
    SD3_T5_LEN,
    SD3_TEXT_LEN,
    output_rel_error,
    pipe_and_drop_in,
    sd3_prompt_inputs,
    tiny_sd3_pipeline,
)
from tests.helpers import rel_error


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def compiled(pipe):
    """One all-compute drop-in for the module: its samplers are compiled once per setting."""
    return compile_pipeline(pipe)


@pytest.mark.parametrize(("guidance", "side"), [(5.0, 8), (1.0, 12)])  # CFG on and off, two resolutions
def test_all_compute_reproduces_the_pipeline_from_embeddings(pipe, compiled, guidance, side):
    kw = dict(**sd3_prompt_inputs(2), guidance_scale=guidance, num_inference_steps=5, height=side, width=side)
    for output_type in ("np", "latent"):
        got, want = pipe_and_drop_in(pipe, compiled, output_type=output_type, **kw)
        assert got.shape == want.shape
        assert output_rel_error(got, want) <= 1e-5
    latent = side // pipe.vae_scale_factor
    assert got.shape == (2, 4, latent, latent)
    assert isinstance(compiled, CompiledSD3Pipeline) and PIPELINES["StableDiffusion3Pipeline"] is CompiledSD3Pipeline


def test_prompts_are_encoded_by_the_pipelines_clip_and_t5(pipe, compiled):
    kw = dict(prompt=["a red cat", "the big blue house"], negative_prompt=["a dog", "the tree"], guidance_scale=4.0,
              num_inference_steps=4, max_sequence_length=SD3_T5_LEN, num_images_per_prompt=2, output_type="np")
    got, want = pipe_and_drop_in(pipe, compiled, **kw)
    assert got.shape == want.shape == (4, 8, 8, 3)
    assert output_rel_error(got, want) <= 1e-5
    got, want = pipe_and_drop_in(pipe, compiled, **{**kw, "clip_skip": 1, "output_type": "pt"})  # the penultimate layer
    assert isinstance(got, torch.Tensor) and output_rel_error(got, want) <= 1e-5
    text_len = pipe.tokenizer.model_max_length + SD3_T5_LEN  # CLIP tokens then T5 tokens
    assert (4, True, text_len, 8, None, None) in compiled.samplers
    pil = compiled(prompt="a cat", num_inference_steps=2, max_sequence_length=SD3_T5_LEN).images
    assert type(pil[0]).__name__ == "Image" and pil[0].size == (8, 8)
    out = compiled(prompt="a cat", num_inference_steps=2, max_sequence_length=SD3_T5_LEN, return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1


def test_dynamic_shifting_takes_mu_from_the_image_size(tmp_path):
    pipe = tiny_sd3_pipeline(tmp_path, dynamic=True, encoders=False)
    compiled = compile_pipeline(pipe)
    mus = {side: compiled.shift_mu(side, side) for side in (8, 16)}
    assert mus[8] != mus[16]  # 16 and 64 latent patches: the two ends of the tiny scheduler's range
    plans = {side: pipeline_plan(pipe.scheduler, 4, mu=mu) for side, mu in mus.items()}
    assert [c.timestep for c in plans[8].calls] != [c.timestep for c in plans[16].calls]
    for side in (8, 16):
        kw = dict(**sd3_prompt_inputs(1), guidance_scale=4.0, num_inference_steps=4, height=side, width=side,
                  output_type="latent")
        got, want = pipe_and_drop_in(pipe, compiled, **kw)
        assert output_rel_error(got, want) <= 1e-5
    got, want = pipe_and_drop_in(pipe, compiled, **kw, mu=0.9)  # a μ the caller gives wins, as in the pipeline
    assert output_rel_error(got, want) <= 1e-5 and compiled.shift_mu(16, 16, 0.9) == 0.9


def test_sigmas_and_given_latents_are_the_pipelines(pipe, compiled):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(**sd3_prompt_inputs(1), guidance_scale=3.0, sigmas=[1.0, 0.8, 0.5, 0.2], latents=noise,
              output_type="latent")
    got, want = pipe_and_drop_in(pipe, compiled, **kw)
    assert output_rel_error(got, want) <= 1e-5
    assert (4, True, SD3_TEXT_LEN, 8, None, (1.0, 0.8, 0.5, 0.2)) in compiled.samplers  # NFE = len(sigmas)
    assert compiled.shift_mu(8, 8, 0.9) is None  # a static shift: μ changes nothing, as in the scheduler


def test_a_unipc_flow_scheduler_is_followed_too(tmp_path):
    pipe = tiny_sd3_pipeline(tmp_path, encoders=False)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    kw = dict(**sd3_prompt_inputs(2), guidance_scale=5.0, num_inference_steps=6, output_type="latent")
    got, want = pipe_and_drop_in(pipe, compile_pipeline(pipe), **kw)
    assert output_rel_error(got, want) <= 1e-5


def test_a_schedule_runs_the_cache_and_equals_the_reference_executor(pipe):
    model = DiffusersSD3(pipe.transformer, text_len=SD3_TEXT_LEN, vae_scale_factor=pipe.vae_scale_factor)
    layout = family_of(model).layout(model)
    plan = pipeline_plan(pipe.scheduler, 6)
    sched = heuristic("random", plan, model="sd3-tiny", depth=layout.depth, fraction=0.6, seed=2, kinds=layout)
    assert sum(len(ids) for c in sched.calls for ids in c.mask) > 0
    compiled = compile_pipeline(pipe, sched)
    inputs = sd3_prompt_inputs(2, seed=4)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    kw = dict(**inputs, guidance_scale=5.0, num_inference_steps=6, latents=noise, output_type="latent")
    cached = compiled(**kw).images
    y = torch.stack([pack_condition(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"]),
                     pack_condition(inputs["negative_prompt_embeds"], inputs["negative_pooled_prompt_embeds"])], 1)
    assert rel_error(cached, reference.sample(model, plan, sched, noise, y, 5.0)) <= 1e-5
    uncached = pipe(**kw).images
    assert not torch.allclose(cached, uncached, atol=1e-5)  # the cache engaged
    sampler = compiled.sd3_sampler(6, True, SD3_TEXT_LEN, 8)
    assert sampler.info["model"]["diffusers_class"] == "SD3Transformer2DModel"
    assert sampler.info["model"]["sd3"] == model.record()
    with pytest.raises(L2CError, match=r"^the schedule is for flow-euler with 6 NFE, the pipeline runs flow-euler "
                                       r"with num_inference_steps=7$"):
        compiled(**{**kw, "num_inference_steps": 7})
    other = pipeline_plan(DDIMScheduler(clip_sample=False), 6)
    with pytest.raises(L2CError, match=r"^the schedule is for ddim with 6 NFE, the pipeline runs flow-euler"):
        compile_pipeline(pipe, heuristic("all", other, model="x", depth=layout.depth, fraction=1.0,
                                         kinds=layout))(**kw)


def test_bad_input_and_the_wrong_scheduler_are_one_line(pipe, compiled, tmp_path):
    embeds = sd3_prompt_inputs(2)
    kw = dict(num_inference_steps=2, output_type="latent")
    cases = [
        (dict(**embeds, height=8, width=12), r"^compile_pipeline draws square images only, this call asks for 8×12$"),
        (dict(**embeds, height=9, width=9), r"^`height` and `width` have to be divisible by 2 but are 9 and 9\."),
        (dict(**embeds, num_images_per_prompt=2), r"^StableDiffusion3Pipeline does not repeat given prompt_embeds for "
                                                  r"num_images_per_prompt=2"),
        (dict(prompt_embeds=embeds["prompt_embeds"]), r"^If `prompt_embeds` are provided, `pooled_prompt_embeds` also"),
        ({}, r"^Provide either `prompt` or `prompt_embeds`"),
        (dict(prompt=["a cat", "a dog"], negative_prompt=["a tree"]), r"^`negative_prompt`: \['a tree'\] has batch size 1"),
        (dict(prompt="a cat", generator=[torch.Generator()] * 3), r"^You have passed a list of generators of length 3"),
    ]
    for args, message in cases:
        with pytest.raises(L2CError, match=message) as info:
            compiled(**{**kw, **args})
        assert "\n" not in str(info.value)
    other = tiny_sd3_pipeline(tmp_path, encoders=False)
    other.scheduler = DDIMScheduler()
    with pytest.raises(L2CError, match=r"^StableDiffusion3Pipeline samples with flow matching \(velocity\); its "
                                       r"DDIMScheduler is not a flow-matching scheduler$"):
        compile_pipeline(other)


# ---------------------------------------------------------------------------------------------
# A folder saved with save_pretrained: loading, the spec (layout, plan), the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "sd3"
    pipe.save_pretrained(out)
    return out


def test_saved_pipeline_loads_offline_with_its_layout_plan_and_prompt_length(pipe, folder):
    from l2c_compile.diffusers import load_diffusers, load_pipeline
    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.models.select import make_spec_plan, spec_layout

    loaded = load_pipeline(folder)
    assert type(loaded).__name__ == "StableDiffusion3Pipeline"
    model = load_diffusers(folder)
    default_t5 = 256  # StableDiffusion3Pipeline's max_sequence_length
    assert isinstance(model, DiffusersSD3) and model.text_len == pipe.tokenizer.model_max_length + default_t5
    assert family_of(model).adapter_class() is DiffusersSD3  # the adapter the family declares
    with pytest.raises(L2CError, match=r"^family 'dit' declares no adapter$"):
        get_family("dit").adapter_class()
    assert load_diffusers(folder / "transformer").text_len == 77 + default_t5  # a model folder: SD3's own
    spec = spec_for_folder(folder)
    real = family_of(model).layout(model)
    assert spec_layout(spec) == spec.layout == real and not real.is_uniform  # from the config, no weights
    assert make_spec_plan(spec, None, 6) == pipeline_plan(pipe.scheduler, 6)  # the folder's shift 3
    assert spec_for_folder(folder / "transformer").scheduler_plan(6) is None  # no scheduler to read
    kw = dict(**sd3_prompt_inputs(1), guidance_scale=5.0, num_inference_steps=3, output_type="latent")
    got, want = pipe_and_drop_in(pipe, compile_pipeline(loaded), **kw)
    assert output_rel_error(got, want) <= 1e-5


def test_a_dynamically_shifting_folder_plans_at_the_models_size(tmp_path):
    from l2c_compile.diffusers.spec import spec_for_folder

    pipe = tiny_sd3_pipeline(tmp_path, dynamic=True, encoders=False)
    pipe.save_pretrained(tmp_path / "sd3")
    side = pipe.default_sample_size * pipe.vae_scale_factor
    mu = compile_pipeline(pipe).shift_mu(side, side)
    assert mu is not None
    assert spec_for_folder(tmp_path / "sd3").scheduler_plan(5) == pipeline_plan(pipe.scheduler, 5, mu=mu)
    config = tmp_path / "sd3" / "scheduler" / "scheduler_config.json"
    for name, message in [("EulerDiscreteScheduler", r"^the pipeline folder's scheduler 'EulerDiscreteScheduler' has "
                                                     r"no compiled plan \(supported: DDIMScheduler, "),
                          ("DDIMScheduler", r"^SD3Transformer2DModel samples with flow matching; the folder's "
                                            r"DDIMScheduler is not a flow-matching scheduler$")]:
        config.write_text(json.dumps({"_class_name": name}), encoding="utf-8")
        with pytest.raises(L2CError, match=message):
            spec_for_folder(tmp_path / "sd3").scheduler_plan(5)


def _cli(*args):
    from typer.testing import CliRunner

    from l2c_compile.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_schedule_compile_verify_sample_with_a_prompt(tmp_path, pipe, folder):
    from l2c_compile.schedule import Schedule
    from tests.diffusers_helpers import tiny_pixart_pipeline

    sched, art, png = tmp_path / "s.json", tmp_path / "art", tmp_path / "x.png"
    r = _cli("schedule", "heuristic", "--diffusers", folder, "--nfe", 6, "--kind", "random", "--fraction", 0.5,
             "-o", sched, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(sched.read_text())
    assert doc["sampler"] == "flow-euler" and doc["kinds"] == ["attn", "attn2", "mlp", "txt_mlp"]
    assert doc["groups"] == [[1, ["attn", "attn2", "mlp", "txt_mlp"]], [1, ["attn", "mlp", "txt_mlp"]],
                             [1, ["attn", "mlp"]]]
    cached = compile_pipeline(pipe, Schedule.load(sched))  # a CLI schedule fits the pipeline's own plan
    kw = dict(**sd3_prompt_inputs(1), guidance_scale=5.0, num_inference_steps=6, output_type="latent")
    got, want = pipe_and_drop_in(pipe, cached, **kw)
    assert not np.allclose(got, want, atol=1e-5)  # and runs its cache
    r = _cli("compile", "--diffusers", folder, "--nfe", 6, "--schedule", sched, "-o", art, "--format", "json")
    assert r.exit_code == 0, r.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["diffusers_class"] == "SD3Transformer2DModel"
    assert manifest["model"]["sd3"]["text_len"] == pipe.tokenizer.model_max_length + 256
    r = _cli("verify", art, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_rel_error"] <= 1e-5
    r = _cli("sample", art, "--prompt", "a red cat", "--prompt", "the big house", "--diffusers", folder, "-o", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tiny_pixart_pipeline(0).save_pretrained(tmp_path / "pixart")
    for args, message in [
        ((), "this artifact draws from text: pass --prompt TEXT and --diffusers DIR"),
        (("--prompt", "a cat", "--diffusers", tmp_path / "pixart"),
         f"this artifact is a SD3Transformer2DModel; {tmp_path / 'pixart'} is a PixArtAlphaPipeline with a "
         "PixArtTransformer2DModel"),
    ]:
        r = _cli("sample", art, *args, "-o", tmp_path / "y.png")
        assert r.exit_code != 0 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "y.png").exists()
    r = _cli("compile", "--diffusers", folder, "--nfe", 7, "--schedule", sched, "-o", tmp_path / "a7")
    assert r.exit_code != 0 and "schedule was made for flow-euler with 6 NFE but the sampler plan is flow-euler " \
        "with 7 NFE" in r.output


def test_cli_trains_a_router_from_prompts_then_imports_and_compiles_it(tmp_path, folder):
    from safetensors.torch import save_file

    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.schedule.router_files import load_router

    text = tmp_path / "prompts.txt"
    text.write_text("a red cat\n\nthe big dog\n", encoding="utf-8")
    inputs = sd3_prompt_inputs(3, seed=5)
    embeds = tmp_path / "embeds.safetensors"
    save_file({"prompt_embeds": inputs["prompt_embeds"], "pooled_prompt_embeds": inputs["pooled_prompt_embeds"],
               "negative_prompt_embeds": inputs["negative_prompt_embeds"][:1].contiguous(),
               "negative_pooled_prompt_embeds": inputs["negative_pooled_prompt_embeds"][:1].contiguous()}, embeds)
    layout = spec_for_folder(folder).layout
    for prompts in (text, embeds):
        out = tmp_path / f"{prompts.stem}.safetensors"
        r = _cli("train", "--diffusers", folder, "--prompts", prompts, "--nfe", 6, "--steps", 3, "--batch-size", 2,
                 "--pool-size", 4, "--lam", 1.0, "--lr", 0.1, "-o", out, "--format", "json")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["sampler"] == "flow-euler" and summary["trained_rows"] and np.isfinite(summary["final_loss"])
        router = load_router(out)
        assert router.logits.shape == (6, layout.width)  # one logit per step and sublayer the blocks have
    sched = tmp_path / "s.json"
    r = _cli("schedule", "import", tmp_path / "embeds.safetensors", "--diffusers", folder, "--nfe", 6,
             "--threshold", 0.5, "-o", sched)
    assert r.exit_code == 0, r.output
    r = _cli("compile", "--diffusers", folder, "--nfe", 6, "--schedule", sched, "-o", tmp_path / "a")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.safetensors"
    save_file({"prompt_embeds": inputs["prompt_embeds"]}, bad)
    r = _cli("train", "--diffusers", folder, "--prompts", bad, "--nfe", 6, "-o", tmp_path / "x.safetensors")
    assert r.exit_code != 0 and "bad.safetensors lacks pooled_prompt_embeds (has prompt_embeds)" in r.output
