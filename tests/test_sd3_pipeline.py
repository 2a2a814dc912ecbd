"""compile_pipeline for ``StableDiffusion3Pipeline``: the drop-in reproduces ``pipe(...)``, runs a
schedule's cache, and refuses what it cannot do in one line.

Tiny random pipelines built offline (``tests/diffusers_helpers.py``): the SD3.5-shaped transformer
(second attention in block 0, a context_pre_only last block), a one-level VAE with SD3's
``scaling_factor`` / ``shift_factor``, two tiny CLIP text encoders with projection, a tiny T5 and
in-memory tokenizers, and the flow-matching Euler scheduler (static shift 3, or dynamic shifting).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import DDIMScheduler, UniPCMultistepScheduler

from l2c_compile.compiler import reference
from l2c_compile.diffusers import compile_pipeline, pipeline_plan
from l2c_compile.diffusers.pipeline import PIPELINES, CompiledSD3Pipeline
from l2c_compile.diffusers.sd3 import DiffusersSD3, pack_condition
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.schedule import heuristic
from tests.diffusers_helpers import SD3_T5_LEN, SD3_TEXT_LEN, sd3_prompt_inputs, tiny_sd3_pipeline
from tests.helpers import rel_error


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return tiny_sd3_pipeline(tmp_path_factory.mktemp("sd3"))


@pytest.fixture(scope="module")
def compiled(pipe):
    """One all-compute drop-in for the module: its samplers are compiled once per setting."""
    return compile_pipeline(pipe)


def _rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _both(pipe, compiled, **kw):
    """``pipe(...)`` and the drop-in's output for the same arguments and seed."""
    want = pipe(generator=torch.Generator().manual_seed(1), **kw).images
    got = compiled(generator=torch.Generator().manual_seed(1), **kw).images
    return got, want


@pytest.mark.parametrize(("guidance", "side"), [(5.0, 8), (1.0, 12)])  # CFG on and off, two resolutions
def test_all_compute_reproduces_the_pipeline_from_embeddings(pipe, compiled, guidance, side):
    kw = dict(**sd3_prompt_inputs(2), guidance_scale=guidance, num_inference_steps=5, height=side, width=side)
    for output_type in ("np", "latent"):
        got, want = _both(pipe, compiled, output_type=output_type, **kw)
        assert got.shape == want.shape
        assert _rel(got, want) <= 1e-5
    latent = side // pipe.vae_scale_factor
    assert got.shape == (2, 4, latent, latent)
    assert isinstance(compiled, CompiledSD3Pipeline) and PIPELINES["StableDiffusion3Pipeline"] is CompiledSD3Pipeline


def test_prompts_are_encoded_by_the_pipelines_clip_and_t5(pipe, compiled):
    kw = dict(prompt=["a red cat", "the big blue house"], negative_prompt=["a dog", "the tree"], guidance_scale=4.0,
              num_inference_steps=4, max_sequence_length=SD3_T5_LEN, num_images_per_prompt=2, output_type="np")
    got, want = _both(pipe, compiled, **kw)
    assert got.shape == want.shape == (4, 8, 8, 3)
    assert _rel(got, want) <= 1e-5
    got, want = _both(pipe, compiled, **{**kw, "clip_skip": 1, "output_type": "pt"})  # the penultimate layer
    assert isinstance(got, torch.Tensor) and _rel(got, want) <= 1e-5
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
        got, want = _both(pipe, compiled, **kw)
        assert _rel(got, want) <= 1e-5
    got, want = _both(pipe, compiled, **kw, mu=0.9)  # a μ the caller gives wins, as in the pipeline
    assert _rel(got, want) <= 1e-5 and compiled.shift_mu(16, 16, 0.9) == 0.9


def test_sigmas_and_given_latents_are_the_pipelines(pipe, compiled):
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    kw = dict(**sd3_prompt_inputs(1), guidance_scale=3.0, sigmas=[1.0, 0.8, 0.5, 0.2], latents=noise,
              output_type="latent")
    got, want = _both(pipe, compiled, **kw)
    assert _rel(got, want) <= 1e-5
    assert (4, True, SD3_TEXT_LEN, 8, None, (1.0, 0.8, 0.5, 0.2)) in compiled.samplers  # NFE = len(sigmas)
    assert compiled.shift_mu(8, 8, 0.9) is None  # a static shift: μ changes nothing, as in the scheduler


def test_a_unipc_flow_scheduler_is_followed_too(tmp_path):
    pipe = tiny_sd3_pipeline(tmp_path, encoders=False)
    pipe.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    kw = dict(**sd3_prompt_inputs(2), guidance_scale=5.0, num_inference_steps=6, output_type="latent")
    got, want = _both(pipe, compile_pipeline(pipe), **kw)
    assert _rel(got, want) <= 1e-5


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
