"""compile_pipeline for ``FluxPipeline``: the drop-in reproduces ``pipe(...)`` (FLUX.1-dev with the
embedded guidance scale, schnell without; true CFG on and off; resolutions whose dynamic shift μ
differs), runs a schedule's cache, refuses what it cannot do in one line, and the CLI takes a saved
FLUX folder.

Tiny random pipelines built offline (``tests/diffusers_helpers.py``): the FLUX-shaped transformer
(2 double-stream and 2 single-stream blocks), a one-level VAE with FLUX's ``scaling_factor`` /
``shift_factor``, a tiny CLIP text model (its pooled output), a tiny T5 and in-memory tokenizers,
and the flow-matching Euler scheduler with FLUX.1-dev's dynamic shifting over 16–64 image tokens.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import DDIMScheduler

from l2c_compile.compiler import reference
from l2c_compile.diffusers import compile_pipeline
from l2c_compile.diffusers.flux import DiffusersFlux, flux_mu, flux_plan, pack_condition
from l2c_compile.diffusers.pipelines import PIPELINES, CompiledFluxPipeline
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.schedule import heuristic
from tests.diffusers_helpers import (
    FLUX_POOLED_DIM,
    FLUX_T5_LEN,
    FLUX_TEXT_LEN,
    flux_prompt_inputs,
    output_rel_error,
    pipe_and_drop_in,
    tiny_flux_pipeline,
    tiny_sd3_pipeline,
)
from tests.helpers import rel_error

STEPS = 4


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    """FLUX.1-dev-shaped: guidance embedded, dynamic shifting, CLIP and T5 encoders."""
    return tiny_flux_pipeline(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def schnell(tmp_path_factory):
    """Same shapes and scheduler as ``dev``, no guidance embedding: only the conditioning differs."""
    return tiny_flux_pipeline(tmp_path_factory.mktemp("schnell"), guidance_embeds=False, encoders=False)


@pytest.fixture(scope="module")
def compiled(dev):
    """One all-compute drop-in for the module: its samplers are compiled once per setting."""
    return compile_pipeline(dev)


def _prompts(**extra):
    return dict(prompt=["a red cat", "the big house"], num_inference_steps=STEPS, max_sequence_length=FLUX_T5_LEN,
                **extra)


# ---------------------------------------------------------------------------------------------
# schedule=None reproduces pipe(...)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "true_cfg"), [(8, 1.0), (16, 4.0)])  # μ at both ends of the tiny range
def test_dev_reproduces_the_pipeline_through_its_encoders(dev, compiled, side, true_cfg):
    kw = _prompts(negative_prompt=["a dog", "the tree"], true_cfg_scale=true_cfg, guidance_scale=3.0,
                  height=side, width=side)
    for output_type in ("np", "latent"):
        got, want = pipe_and_drop_in(dev, compiled, output_type=output_type, **kw)
        assert got.shape == want.shape
        assert output_rel_error(got, want) <= 1e-5
    assert got.shape == (2, (side // 2) ** 2, 16)  # packed latents, as the pipeline returns them
    assert (STEPS, true_cfg > 1, FLUX_T5_LEN, side, None) in compiled.samplers
    assert isinstance(compiled, CompiledFluxPipeline) and PIPELINES["FluxPipeline"] is CompiledFluxPipeline


def test_the_dynamic_shift_follows_the_image_size(dev, compiled):
    mus = [flux_mu(dev.scheduler.config, (side // 2) ** 2) for side in (8, 16)]
    assert mus == [0.5, 1.15]  # base_shift at 16 tokens, max_shift at 64: the tiny scheduler's range
    plans = [compiled._plan(STEPS, side=side)[0] for side in (8, 16)]
    assert [c.timestep for c in plans[0].calls][1:] != [c.timestep for c in plans[1].calls][1:]


@pytest.mark.parametrize(("side", "true_cfg"), [(8, 4.0), (12, 1.0)])
def test_schnell_reproduces_the_pipeline_from_embeddings(schnell, side, true_cfg):
    compiled = compile_pipeline(schnell)
    kw = dict(**flux_prompt_inputs(2), true_cfg_scale=true_cfg, num_inference_steps=STEPS, height=side, width=side)
    for output_type in ("np", "latent"):
        got, want = pipe_and_drop_in(schnell, compiled, output_type=output_type, **kw)
        assert output_rel_error(got, want) <= 1e-5
    model = next(iter(compiled.samplers.values())).model
    assert model.guidance_embeds is False and model.text_len == FLUX_TEXT_LEN


def test_images_per_prompt_output_types_given_latents_and_sigmas(dev, compiled):
    kw = _prompts(num_images_per_prompt=2, height=8, width=8)
    got, want = pipe_and_drop_in(dev, compiled, output_type="pt", **kw)
    assert isinstance(got, torch.Tensor) and got.shape == (4, 3, 8, 8) and output_rel_error(got, want) <= 1e-5
    pil = compiled(**{**kw, "num_images_per_prompt": 1}).images
    assert type(pil[0]).__name__ == "Image" and pil[0].size == (8, 8)
    out = compiled(**{**kw, "num_images_per_prompt": 1}, output_type="latent", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1
    latents = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(3))  # packed, as the pipeline takes them
    sigmas = [1.0, 0.7, 0.4]
    got, want = pipe_and_drop_in(dev, compiled, **_prompts(height=8, width=8), latents=latents, sigmas=sigmas, output_type="latent")
    assert output_rel_error(got, want) <= 1e-5
    assert (3, False, FLUX_T5_LEN, 8, tuple(sigmas)) in compiled.samplers  # NFE = len(sigmas)


# ---------------------------------------------------------------------------------------------
# A schedule: the cache engages, the reference executor agrees, a misfit is one line
# ---------------------------------------------------------------------------------------------


def test_a_schedule_runs_the_cache_and_equals_the_reference_executor(dev, schnell, tmp_path):
    model = DiffusersFlux(dev.transformer, text_len=FLUX_TEXT_LEN, height=8, vae_scale_factor=dev.vae_scale_factor)
    layout = family_of(model).layout(model)
    plan = flux_plan(dev.scheduler, STEPS, 8, 8)
    sched = heuristic("random", plan, model="flux-tiny", depth=layout.depth, fraction=0.6, seed=2, kinds=layout)
    assert sum(len(ids) for c in sched.calls for ids in c.mask) > 0
    cached_pipe = compile_pipeline(dev, sched)
    inputs = flux_prompt_inputs(2, seed=4)
    latents = torch.randn(2, 16, 16, generator=torch.Generator().manual_seed(4))
    kw = dict(**inputs, true_cfg_scale=4.0, guidance_scale=2.5, num_inference_steps=STEPS, height=8, width=8,
              latents=latents, output_type="latent")
    cached = cached_pipe(**kw).images
    y = torch.stack([pack_condition(inputs["prompt_embeds"], inputs["pooled_prompt_embeds"], 2.5),
                     pack_condition(inputs["negative_prompt_embeds"], inputs["negative_pooled_prompt_embeds"], 2.5)], 1)
    noise = dev._unpack_latents(latents, 8, 8, dev.vae_scale_factor)
    want = reference.sample(model, plan, sched, noise, y, 4.0)
    assert rel_error(cached, dev._pack_latents(want, *want.shape)) <= 1e-5
    uncached = dev(**kw).images
    assert not torch.allclose(cached, uncached, atol=1e-5)  # the cache engaged
    sampler = cached_pipe.flux_sampler(STEPS, True, FLUX_TEXT_LEN, 8)
    assert sampler.info["model"]["flux"] == model.record()
    assert sampler.info["model"]["name"] == "diffusers:FluxTransformer2DModel(guidance_embeds=True)"

    cases = [  # (pipeline, schedule, call arguments, the one line)
        (dev, sched, dict(num_inference_steps=5), r"^the schedule is for flow-euler with 4 NFE, the pipeline runs "
                                                  r"flow-euler with num_inference_steps=5$"),
        (dev, sched, dict(height=16, width=16, latents=None),  # another size: another μ, other timesteps
         r"^call 1 has timestep [\d.]+ in the schedule but [\d.]+ in the flow-euler plan$"),
    ]
    schnell_name = spec_from_config("FluxTransformer2DModel", dict(schnell.transformer.config)).name
    assert schnell_name == "diffusers:FluxTransformer2DModel(guidance_embeds=False)"
    cases.append((dev, heuristic("random", plan, model=schnell_name, depth=layout.depth, fraction=0.5, kinds=layout),
                  {}, r"^the schedule was made for diffusers:FluxTransformer2DModel\(guidance_embeds=False\), this "
                      r"pipeline's transformer is diffusers:FluxTransformer2DModel\(guidance_embeds=True\)$"))
    sd3 = tiny_sd3_pipeline(tmp_path, encoders=False)
    sd3_model = spec_from_config("SD3Transformer2DModel", dict(sd3.transformer.config))
    sd3_sched = heuristic("random", plan, model=sd3_model.name, depth=sd3_model.depth, fraction=0.5,
                          kinds=sd3_model.layout)
    cases.append((dev, sd3_sched, {}, r"^the schedule was made for diffusers:SD3Transformer2DModel, this pipeline's "
                                      r"transformer is diffusers:FluxTransformer2DModel\(guidance_embeds=True\)$"))
    cases.append((dev, heuristic("random", plan, model="sd3-tiny", depth=sd3_model.depth, fraction=0.5,
                                 kinds=sd3_model.layout), {}, r"^schedule is for 3 blocks but this model has 4$"))
    flux_sched = heuristic("random", plan, model="diffusers:FluxTransformer2DModel(guidance_embeds=True)",
                           depth=layout.depth, fraction=0.5, kinds=layout)
    sd3_kw = dict(prompt_embeds=torch.randn(1, 5, 16), pooled_prompt_embeds=torch.randn(1, 12), guidance_scale=1.0,
                  num_inference_steps=STEPS, output_type="latent")
    for pipe, schedule, args, message in cases:
        with pytest.raises(L2CError, match=message) as info:
            compile_pipeline(pipe, schedule)(**{**kw, **args})
        assert "\n" not in str(info.value)
    with pytest.raises(L2CError, match=r"^the schedule was made for diffusers:FluxTransformer2DModel\(guidance_embeds="
                                       r"True\), this pipeline's transformer is diffusers:SD3Transformer2DModel$"):
        compile_pipeline(sd3, flux_sched)(**sd3_kw)


def test_bad_input_and_the_wrong_scheduler_are_one_line(dev, compiled, tmp_path):
    embeds = flux_prompt_inputs(2)
    kw = dict(num_inference_steps=2, output_type="latent", height=8, width=8, max_sequence_length=FLUX_T5_LEN)
    long = "the big red house the tree"
    tokens = len(dev.tokenizer_2(long).input_ids)  # the tiny T5 tokenizer's count, the end token included
    assert tokens > FLUX_T5_LEN
    cases = [
        (dict(**embeds, height=8, width=12), r"^compile_pipeline draws square images only, this call asks for 8×12$"),
        (dict(**embeds, num_images_per_prompt=2), r"^FluxPipeline does not repeat given prompt_embeds for "
                                                  r"num_images_per_prompt=2"),
        (dict(prompt_embeds=embeds["prompt_embeds"]), r"^If `prompt_embeds` are provided, `pooled_prompt_embeds` also"),
        ({}, r"^Provide either `prompt` or `prompt_embeds`"),
        (dict(prompt="a cat", max_sequence_length=600), r"^`max_sequence_length` cannot be greater than 512 but is 600$"),
        (dict(prompt=long), rf"^prompt has {tokens} T5 tokens, more than max_sequence_length={FLUX_T5_LEN}; shorten "
                            r"it or raise max_sequence_length \(at most 512\)$"),
        (dict(prompt=["a cat", long]), rf"^prompt 1 has {tokens} T5 tokens"),
        (dict(prompt=["a cat"], negative_prompt=[long], true_cfg_scale=2.0),
         rf"^negative prompt has {tokens} T5 tokens, more than max_sequence_length={FLUX_T5_LEN}"),
        (dict(prompt=["a cat", "a dog"], negative_prompt="a tree", true_cfg_scale=2.0),
         r"^the negative prompt encodes to \(1, 6, 16\), the prompt to \(2, 6, 16\): give one negative prompt per"),
        (dict(**{**embeds, "negative_prompt_embeds": embeds["negative_prompt_embeds"][:, :3]}, true_cfg_scale=2.0),
         r"^prompt_embeds \(2, 5, 16\) and negative_prompt_embeds \(2, 3, 16\) must have the same shape$"),
        (dict(prompt="a cat", generator=[torch.Generator()] * 3), r"^You have passed a list of generators of length 3"),
        (dict(prompt="a cat", latents=torch.randn(1, 4, 8, 8)), r"^latents must be packed as FluxPipeline.prepare_latents "
                                                                r"packs them, \(1, 16, 16\) for 1 images of 8×8, got"),
    ]
    for args, message in cases:
        with pytest.raises(L2CError, match=message) as info:
            compiled(**{**kw, **args})
        assert "\n" not in str(info.value)
    # a schedule made from another folder's model fails at compile_pipeline; one made at another size, on the call
    from l2c_compile.schedule.sizes import with_sample_size

    model = DiffusersFlux(dev.transformer, text_len=FLUX_T5_LEN, height=8, vae_scale_factor=dev.vae_scale_factor)
    layout = family_of(model).layout(model)
    made = heuristic("all", flux_plan(dev.scheduler, 2, 8, 8),
                     model="diffusers:FluxTransformer2DModel(guidance_embeds=False)", depth=layout.depth,
                     fraction=1.0, kinds=layout)
    with pytest.raises(L2CError, match=r"^the schedule was made for diffusers:FluxTransformer2DModel\(guidance_embeds="
                                       r"False\), this pipeline's transformer is .*\(guidance_embeds=True\)$"):
        compile_pipeline(dev, made)
    sized = with_sample_size(dataclasses.replace(made, model="flux-test"), {"height": 16, "width": 16})
    with pytest.raises(L2CError, match=r"^the schedule was made for 16×16, this call draws 8×8$"):
        compile_pipeline(dev, sized)(**embeds, **kw)
    other = tiny_flux_pipeline(tmp_path, encoders=False)
    other.scheduler = DDIMScheduler()
    with pytest.raises(L2CError, match=r"^FluxPipeline samples with flow matching \(velocity\); its DDIMScheduler is "
                                       r"not a flow-matching scheduler$"):
        compile_pipeline(other)


def test_the_adapter_packs_and_encodes_as_the_pipeline(dev):
    model = DiffusersFlux(dev.transformer, text_len=FLUX_T5_LEN, height=8, vae_scale_factor=1)
    y = model.prompt_condition(dev, ["a red cat", "the dog"], cfg=True)  # (2, 2, L + 1, W): prompt, negative ""
    with torch.no_grad():  # as prompt_condition encodes (grad mode takes other attention kernels)
        pe, pooled, _ = dev.encode_prompt(["a red cat", "the dog"], device="cpu", max_sequence_length=FLUX_T5_LEN)
    assert y.shape == (2, 2, FLUX_T5_LEN + 1, model.cond_width)
    assert torch.equal(y[:, 0], pack_condition(pe, pooled, 3.5))  # FluxPipeline's default guidance, embedded
    assert torch.equal(y[:, 0, -1, FLUX_POOLED_DIM], torch.full((2,), 3.5))
    p = flux_prompt_inputs(1)
    assert torch.equal(model.pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"]),
                       pack_condition(p["prompt_embeds"], p["pooled_prompt_embeds"], 3.5))
    with pytest.raises(L2CError, match=rf"^prompt has \d+ T5 tokens, more than max_sequence_length={FLUX_T5_LEN}"):
        model.prompt_condition(dev, ["the big red house the tree"], cfg=False)


# ---------------------------------------------------------------------------------------------
# A folder saved with save_pretrained: loading, the spec (layout, plan, name), the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(dev, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved") / "flux"
    dev.save_pretrained(out)
    return out


def test_saved_pipeline_loads_offline_with_its_layout_plan_and_name(dev, schnell, folder, tmp_path):
    from l2c_compile.diffusers import load_diffusers, load_pipeline
    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.models.select import default_cfg, make_spec_plan, spec_layout

    loaded = load_pipeline(folder)
    assert type(loaded).__name__ == "FluxPipeline"
    model = load_diffusers(folder)
    assert isinstance(model, DiffusersFlux) and model.text_len == 512  # FluxPipeline's max_sequence_length
    assert model.input_size == 128  # FluxPipeline's default: 128 latents a side, whatever the VAE
    spec = spec_for_folder(folder)
    real = family_of(model).layout(model)
    assert spec_layout(spec) == spec.layout == real and not real.is_uniform  # from the config, no weights
    assert spec.latent_shape == (4, 128, 128) and spec.depth == 4 and not default_cfg(spec)
    assert make_spec_plan(spec, None, 5) == flux_plan(dev.scheduler, 5, 128, 128)  # σ linspace, μ at 4096 tokens
    assert make_spec_plan(spec, None, 5) == compile_pipeline(loaded)._plan(5, side=128)[0]
    schnell.save_pretrained(tmp_path / "schnell")
    assert spec_for_folder(tmp_path / "schnell").name != spec.name  # dev and schnell: same shapes, not the same
    kw = dict(**flux_prompt_inputs(1), num_inference_steps=STEPS, height=8, width=8, output_type="latent")
    got, want = pipe_and_drop_in(dev, compile_pipeline(loaded), **kw)  # embeddings: the tiny T5 tokenizer reloads with a pre-tokenizer
    assert output_rel_error(got, want) <= 1e-5


def _cli(*args):
    from typer.testing import CliRunner

    from l2c_compile.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_schedule_compile_verify_sample_with_a_prompt(tmp_path, dev, schnell, folder):
    from l2c_compile.schedule import Schedule

    sched, art, png = tmp_path / "s.json", tmp_path / "art", tmp_path / "x.png"
    r = _cli("schedule", "heuristic", "--diffusers", folder, "--nfe", 3, "--kind", "random", "--fraction", 0.5,
             "-o", sched, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(sched.read_text())
    assert doc["sampler"] == "flow-euler" and doc["model"] == "diffusers:FluxTransformer2DModel(guidance_embeds=True)"
    assert doc["groups"] == [[2, ["attn", "mlp", "txt_mlp"]], [2, ["attn", "mlp"]]]
    assert compile_pipeline(dev, Schedule.load(sched))._plan(3, side=128)  # the pipeline's own plan at its default
    r = _cli("compile", "--diffusers", folder, "--nfe", 3, "--schedule", sched, "-o", art, "--format", "json")
    assert r.exit_code == 0, r.output
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["diffusers_class"] == "FluxTransformer2DModel"
    assert manifest["model"]["flux"]["text_len"] == 512 and manifest["cfg"] is False  # FLUX: no true CFG unless asked
    r = _cli("verify", art, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_rel_error"] <= 1e-5
    r = _cli("sample", art, "--prompt", "a red cat", "--diffusers", folder, "-o", png)
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    schnell.save_pretrained(tmp_path / "schnell")
    other = tmp_path / "schnell.json"
    r = _cli("schedule", "heuristic", "--diffusers", tmp_path / "schnell", "--nfe", 3, "--kind", "random",
             "--fraction", 0.5, "-o", other)
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad"
    (bad / "transformer").mkdir(parents=True)
    (bad / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline", "transformer": [
        "diffusers", "FluxTransformer2DModel"]}), encoding="utf-8")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (bad / "transformer" / "config.json").write_text(json.dumps({**config, "num_single_layers": 5000}), "utf-8")
    for args, message in [
        (("--diffusers", folder, "--schedule", other),
         "schedule was made for diffusers:FluxTransformer2DModel(guidance_embeds=False) but the model is "
         "diffusers:FluxTransformer2DModel(guidance_embeds=True)"),
        (("--diffusers", bad), "depth 5002 is not an integer in 1.."),
        (("--diffusers", tmp_path / "missing"), "is not a folder (expected a diffusers pipeline or model folder)"),
        (("--diffusers", folder, "--num-frames", 9),  # an image family: its size options, one line
         "--num-frames: a FluxTransformer2DModel takes --height, --width only"),
    ]:
        r = _cli("compile", *args, "--nfe", 3, "-o", tmp_path / "a2")
        assert r.exit_code != 0 and message in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "a2").exists()


def test_cli_trains_a_router_from_prompts(tmp_path, folder):
    from safetensors.torch import save_file

    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.schedule.router_files import load_router

    text = tmp_path / "prompts.txt"
    text.write_text("a red cat\n\nthe big dog\n", encoding="utf-8")
    out = tmp_path / "router.safetensors"
    r = _cli("train", "--diffusers", folder, "--prompts", text, "--nfe", 3, "--steps", 2, "--batch-size", 2,
             "--pool-size", 2, "--lam", 1.0, "--lr", 0.1, "-o", out, "--format", "json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["sampler"] == "flow-euler" and summary["trained_rows"] and np.isfinite(summary["final_loss"])
    layout = spec_for_folder(folder).layout
    assert layout.width == 2 * 3 + 2 * 2  # per step: 3 per double block, 2 per single block
    assert load_router(out).logits.shape == (3, layout.width)
    sched = tmp_path / "s.json"
    r = _cli("schedule", "import", out, "--diffusers", folder, "--nfe", 3, "--threshold", 0.5, "-o", sched)
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad.safetensors"
    save_file({"prompt_embeds": torch.zeros(1, 512, 16)}, bad)
    r = _cli("train", "--diffusers", folder, "--prompts", bad, "--nfe", 3, "-o", tmp_path / "x.safetensors")
    assert r.exit_code != 0 and "bad.safetensors lacks pooled_prompt_embeds (has prompt_embeds)" in r.output
    assert not (tmp_path / "x.safetensors").exists()
