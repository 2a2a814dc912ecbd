"""compile_pipeline: a drop-in for DiTPipeline (tiny random models saved and loaded offline)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)

from l2c_compile.compiler import reference
from l2c_compile.diffusers import compile_pipeline, load_diffusers, load_pipeline, pipeline_plan
from l2c_compile.errors import L2CError
from l2c_compile.samplers import make_plan
from tests.diffusers_helpers import save_tiny_pipeline, tiny_pipeline
from tests.helpers import random_schedule, rel_error


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(0)


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize(("guidance", "steps"), [(4.0, 10), (1.0, 7), (1.5, 25)])
def test_all_compute_reproduces_the_pipeline(pipe, guidance, steps):
    compiled = compile_pipeline(pipe, None)
    kw = dict(class_labels=[3, 999, 0], guidance_scale=guidance, num_inference_steps=steps, output_type="np")
    want = pipe(generator=torch.Generator().manual_seed(1), **kw).images
    got = compiled(generator=torch.Generator().manual_seed(1), **kw).images
    assert got.shape == want.shape == (3, 8, 8, 3)
    assert _rel(got, want) <= 1e-5


def test_output_types_are_the_pipelines(pipe):
    compiled = compile_pipeline(pipe)
    pil = compiled([1], num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
    assert type(pil[0]).__name__ == "Image"
    pt = compiled([1], num_inference_steps=4, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert isinstance(pt, torch.Tensor) and pt.shape == (1, 3, 8, 8)
    assert isinstance(compiled([1], num_inference_steps=4, return_dict=False), tuple)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_schedule_equals_the_reference_executor(pipe, seed):
    plan = pipeline_plan(pipe.scheduler, 8)
    sched = random_schedule(plan, 2, random.Random(seed), p=0.7)
    compiled = compile_pipeline(pipe, sched)
    noise = compiled.noise(2, torch.Generator().manual_seed(seed))
    labels = torch.tensor([5, 6])
    want = reference.sample(compiled.model, plan, sched, noise, labels, 4.0)
    got = compiled.sampler(8, True)(noise, labels, 4.0)
    assert rel_error(got, want) <= 1e-5
    assert compiled.sampler(8, True).info["model"]["diffusers_class"] == "DiTTransformer2DModel"
    images = compiled([5, 6], num_inference_steps=8, generator=torch.Generator().manual_seed(seed), output_type="pt")
    assert torch.equal(images.images, compiled.decode(got, "pt"))
    uncached = pipe([5, 6], num_inference_steps=8, generator=torch.Generator().manual_seed(seed), output_type="pt")
    assert not torch.allclose(images.images, uncached.images, atol=1e-6)  # the cache engaged


def test_plan_follows_the_schedulers_spacing_and_update(pipe):
    sched = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    plan = pipeline_plan(sched, 10)
    sched.set_timesteps(10)
    assert [c.timestep for c in plan.calls] == [float(t) for t in sched.timesteps]  # 999, 899, …, 99
    official = make_plan("ddim", 10)  # the DDIM cadence of L2C: full/cache roles and router rows
    assert [(c.role, c.router_index) for c in plan.calls] == [(c.role, c.router_index) for c in official.calls]
    for i, t in enumerate(sched.timesteps):  # every step, the last (t − T//N < 0) included
        x, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        want = sched.step(eps, t, x).prev_sample
        assert rel_error(plan.steps[i].update.apply(x, {i: eps}), want) <= 1e-6


def test_mismatches_are_one_clear_error(pipe):
    plan = pipeline_plan(pipe.scheduler, 8)
    compiled = compile_pipeline(pipe, random_schedule(plan, 2, random.Random(0)))
    with pytest.raises(L2CError, match=r"schedule is for ddim with 8 NFE.*num_inference_steps=9$"):
        compiled([1], num_inference_steps=9)
    dpm = make_plan("dpm-solver-2", 8)
    with pytest.raises(L2CError, match=r"^the schedule is for dpm-solver-2 with 8 NFE, the pipeline runs ddim"):
        compile_pipeline(pipe, random_schedule(dpm, 2, random.Random(0)))([1], num_inference_steps=8)
    with pytest.raises(L2CError, match=r"^schedule is for 3 blocks but this model has 2$"):
        compile_pipeline(pipe, random_schedule(plan, 3, random.Random(0)))([1], num_inference_steps=8)
    with pytest.raises(L2CError, match=r"^schedule must be a Schedule or None, got dict"):
        compile_pipeline(pipe, random_schedule(plan, 2, random.Random(0)).to_dict())
    other = tiny_pipeline(0)
    other.scheduler = EulerDiscreteScheduler.from_config(other.scheduler.config)
    with pytest.raises(L2CError, match="UniPCMultistepScheduler \\(flow prediction\\), this pipeline has EulerDiscreteScheduler"):
        compile_pipeline(other)
    other.scheduler = DPMSolverMultistepScheduler.from_config(other.scheduler.config, solver_order=3)
    with pytest.raises(L2CError, match="solver_order=3 is not supported"):
        compile_pipeline(other)
    other.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)  # a velocity sampler for an ε model
    with pytest.raises(L2CError, match=r"^DiTPipeline samples with ε prediction; its FlowMatchEulerDiscreteScheduler"):
        compile_pipeline(other)
    other.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=True)
    with pytest.raises(L2CError, match="clip_sample=True is not supported"):
        compile_pipeline(other)
    with pytest.raises(L2CError, match="DDIMScheduler cannot take 1001 steps"):
        pipeline_plan(pipe.scheduler, 1001)
    with pytest.raises(L2CError, match="compile_pipeline sets cfg itself"):
        compile_pipeline(pipe, None, cfg=False)


def test_saved_folders_load_offline_and_bad_folders_are_named(tmp_path):
    folder = save_tiny_pipeline(tmp_path / "pipe")
    pipe = load_pipeline(folder)
    for path in (folder, folder / "transformer"):
        model = load_diffusers(path)
        assert type(model.transformer).__name__ == "DiTTransformer2DModel"
        assert torch.equal(model.transformer.pos_embed.proj.weight, pipe.transformer.pos_embed.proj.weight)
    with pytest.raises(L2CError, match=r"vae holds a diffusers AutoencoderKL; supported: DiTTransformer2DModel, PixArtTransformer2DModel, "
                       r"SD3Transformer2DModel, FluxTransformer2DModel, WanTransformer3DModel$"):
        load_diffusers(folder / "vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(L2CError, match="is not a diffusers model folder"):
        load_diffusers(tmp_path / "empty")
    with pytest.raises(L2CError, match="is not a folder"):
        load_diffusers(tmp_path / "missing")
    with pytest.raises(L2CError, match="not a diffusers pipeline folder"):
        load_pipeline(folder / "transformer")


def test_a_dit_pipeline_with_dpm_solver_pp_is_reproduced():
    other = tiny_pipeline(0)
    other.scheduler = DPMSolverMultistepScheduler.from_config(other.scheduler.config)
    assert pipeline_plan(other.scheduler, 8).sampler == "dpm-solver++"
    kw = dict(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=8, output_type="np")
    want = other(generator=torch.Generator().manual_seed(1), **kw).images
    got = compile_pipeline(other)(generator=torch.Generator().manual_seed(1), **kw).images
    assert _rel(got, want) <= 1e-5
