"""compile_pipeline for ``WanPipeline`` (Wan 2.1 text-to-video): the drop-in reproduces
``pipe(...)``, runs a schedule's cache, plans its memory before any work, and refuses what it
cannot do in one line.

Tiny random pipelines built offline (``tests/diffusers_helpers.py``): the Wan transformer, a tiny
``AutoencoderKLWan`` with non-trivial ``latents_mean`` / ``latents_std``, a tiny umT5 with the
in-memory T5 tokenizer, and Wan's flow UniPC scheduler (or the flow-matching Euler one).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from diffusers import DDIMScheduler, WanPipeline

from l2c_compile.compiler import reference
from l2c_compile.compiler.memory import free_memory, planned_cache, weights_bytes
from l2c_compile.diffusers import compile_pipeline, pipeline_plan
from l2c_compile.diffusers.pipelines import PIPELINES, CompiledWanPipeline
from l2c_compile.diffusers.wan import DiffusersWan
from l2c_compile.errors import L2CError
from l2c_compile.families import family_of
from l2c_compile.schedule import heuristic
from l2c_compile.schedule.sizes import with_sample_size
from tests.diffusers_helpers import (
    WAN_T5_LEN,
    WAN_TEXT_LEN,
    output_rel_error,
    pipe_and_drop_in,
    tiny_sd3_pipeline,
    tiny_wan_pipeline,
    tiny_wan_transformer,
    wan_prompt_inputs,
)
from tests.helpers import rel_error

SIZE = dict(height=32, width=48)  # 2 × 3 patches of 16 px per latent frame


@pytest.fixture(scope="module")
def pipes():
    """The tiny pipeline with each scheduler, and one all-compute drop-in for each."""
    out = {}
    for name, unipc in (("unipc", True), ("euler", False)):
        pipe = tiny_wan_pipeline(unipc=unipc)
        out[name] = (pipe, compile_pipeline(pipe))
    return out


@pytest.mark.parametrize(("scheduler", "frames", "guidance", "prompts"), [
    ("unipc", 9, 5.0, True), ("unipc", 5, 1.0, False), ("euler", 5, 5.0, False), ("euler", 9, 1.0, True),
], ids=["unipc-9f-cfg-text", "unipc-5f-nocfg-embeds", "euler-5f-cfg-embeds", "euler-9f-nocfg-text"])
def test_all_compute_reproduces_the_pipeline(pipes, scheduler, frames, guidance, prompts):
    """Frames and latents ≤ 1e-5 relative, CFG on and off, odd frame counts, both flow schedulers,
    prompts through the pipeline's umT5 (two videos per prompt) or given embeddings."""
    pipe, compiled = pipes[scheduler]
    if prompts:
        kw = dict(prompt=["a red cat", "the big blue house"], negative_prompt=["a dog", "the tree"],
                  num_videos_per_prompt=2, max_sequence_length=WAN_T5_LEN)
    else:
        kw = dict(**wan_prompt_inputs(2))
    kw.update(SIZE, num_frames=frames, guidance_scale=guidance, num_inference_steps=4)
    for output_type in ("np", "latent"):
        got, want = pipe_and_drop_in(pipe, compiled, output_type=output_type, **kw)
        assert got.shape == want.shape
        assert output_rel_error(got, want) <= 1e-5, output_type
    assert tuple(got.shape) == (4 if prompts else 2, 4, (frames - 1) // 4 + 1, 4, 6)  # (N, C, F', H/8, W/8)
    text_len = WAN_T5_LEN if prompts else WAN_TEXT_LEN
    assert (4, guidance > 1, text_len, frames, 32, 48) in compiled.samplers
    assert isinstance(compiled, CompiledWanPipeline) and PIPELINES["WanPipeline"] is CompiledWanPipeline


def test_output_types_and_the_frame_rounding_are_the_pipelines(pipes):
    pipe, compiled = pipes["unipc"]
    kw = dict(**wan_prompt_inputs(2), **SIZE, num_frames=7, guidance_scale=5.0, num_inference_steps=4)
    got, want = pipe_and_drop_in(pipe, compiled, output_type="pt", **kw)  # 7 frames: the pipeline rounds to 5
    assert isinstance(got, torch.Tensor) and got.shape == want.shape == (2, 5, 3, 32, 48)
    assert output_rel_error(got, want) <= 1e-5
    pil = compiled(**kw, output_type="pil").frames
    assert len(pil) == 2 and len(pil[0]) == 5 and pil[0][0].size == (48, 32)
    out = compiled(**kw, output_type="latent", return_dict=False)
    assert isinstance(out, tuple) and len(out) == 1
    noise = torch.randn(2, 4, 2, 4, 6, generator=torch.Generator().manual_seed(3))  # given latents, as the pipeline
    got, want = pipe_and_drop_in(pipe, compiled, **{**kw, "output_type": "latent", "latents": noise})
    assert output_rel_error(got, want) <= 1e-5


def _schedule(pipe, steps: int = 6, fraction: float = 0.6):
    model = DiffusersWan(pipe.transformer, text_len=WAN_TEXT_LEN, num_frames=9, **SIZE)
    layout = family_of(model).layout(model)
    plan = pipeline_plan(pipe.scheduler, steps)
    sched = heuristic("random", plan, model="wan-tiny", depth=layout.depth, fraction=fraction, seed=2, kinds=layout)
    assert sum(len(ids) for c in sched.calls for ids in c.mask) > 0
    return model, plan, sched


def test_a_schedule_runs_the_cache_and_equals_the_reference_executor(pipes):
    pipe, _ = pipes["unipc"]
    model, plan, sched = _schedule(pipe)
    compiled = compile_pipeline(pipe, sched)
    inputs = wan_prompt_inputs(2, seed=4)
    noise = torch.randn(2, 4, 3, 4, 6, generator=torch.Generator().manual_seed(4))
    kw = dict(**inputs, **SIZE, num_frames=9, guidance_scale=5.0, num_inference_steps=6, latents=noise,
              output_type="latent")
    cached = compiled(**kw).frames
    y = torch.stack([inputs["prompt_embeds"], inputs["negative_prompt_embeds"]], dim=1)
    assert rel_error(cached, reference.sample(model, plan, sched, noise, y, 5.0)) <= 1e-5
    uncached = pipe(**kw).frames
    assert not torch.allclose(cached, uncached, atol=1e-5)  # the cache engaged
    sampler = compiled.wan_sampler(6, True, WAN_TEXT_LEN, 9, 32, 48)
    assert sampler.info["model"]["diffusers_class"] == "WanTransformer3DModel"
    assert sampler.info["model"]["wan"] == model.record()
    # the cache planned before compiling (model structure and schedule) is what the compiler measured
    planned = planned_cache(model, plan, sched, cfg=True)
    assert planned.peak_entries == sampler.record.peak_live_cache_entries > 0
    assert planned.peak_bytes_per_sample == sampler.record.peak_cache_bytes_per_image > 0
    tokens, dim = model.cache_entry_shape(("attn", 0))
    assert planned.entry_bytes[("attn", 0)] == 2 * tokens * dim * 4  # 2 CFG rows, float32
    assert compile_pipeline(pipe).wan_sampler(6, True, WAN_TEXT_LEN, 9, 32, 48).record.peak_cache_bytes_per_image == 0


def test_a_schedule_for_another_size_or_step_count_is_one_line(pipes):
    pipe, _ = pipes["unipc"]
    _, _, sched = _schedule(pipe)
    kw = dict(**wan_prompt_inputs(1), **SIZE, num_frames=9, num_inference_steps=6, output_type="latent")
    made = with_sample_size(sched, {"num_frames": 9, **SIZE})
    cases = [
        (sched, dict(num_inference_steps=7), r"^the schedule is for unipc-flow with 6 NFE, the pipeline runs "
                                              r"unipc-flow with num_inference_steps=7$"),
        (made, dict(num_frames=5), r"^the schedule was made for 9 frames of 48×32, this call draws 5 frames of 48×32$"),
        (made, dict(height=48), r"^the schedule was made for 9 frames of 48×32, this call draws 9 frames of 48×48$"),
    ]
    for schedule, args, message in cases:
        compiled = compile_pipeline(pipe, schedule)
        with pytest.raises(L2CError, match=message) as info:
            compiled(**{**kw, **args})
        assert "\n" not in str(info.value) and not compiled.samplers  # refused before compiling anything
    assert compile_pipeline(pipe, made)(**kw).frames.shape == (1, 4, 3, 4, 6)  # its own size runs


def test_bad_input_and_unsupported_pipelines_are_one_line(pipes, tmp_path):
    pipe, compiled = pipes["unipc"]
    embeds = wan_prompt_inputs(2)
    kw = dict(**SIZE, num_frames=5, num_inference_steps=2, output_type="latent")
    cases = [
        (dict(**embeds, height=40), r"^`height` and `width` have to be divisible by 16 but are 40 and 48\.$"),
        ({}, r"^Provide either `prompt` or `prompt_embeds`"),
        (dict(**embeds, num_videos_per_prompt=2), r"^WanPipeline does not repeat given prompt_embeds for "
                                                  r"num_videos_per_prompt=2"),
        (dict(**embeds, guidance_scale_2=3.0), r"^`guidance_scale_2` is only supported when the pipeline's "
                                               r"`boundary_ratio` is not None\.$"),
        (dict(prompt=["a cat", "a dog"], negative_prompt=["a tree"]), r"^`negative_prompt`: \['a tree'\] has batch "
                                                                       r"size 1"),
        (dict(prompt="a cat", generator=[torch.Generator()] * 3), r"^You have passed a list of generators of length 3"),
    ]
    for args, message in cases:
        with pytest.raises(L2CError, match=message) as info:
            compiled(**{**kw, **args})
        assert "\n" not in str(info.value)
    parts = dict(tokenizer=None, text_encoder=None, vae=pipe.vae, transformer=pipe.transformer)
    experts = WanPipeline(**parts, scheduler=pipe.scheduler, transformer_2=tiny_wan_transformer(1), boundary_ratio=0.875)
    with pytest.raises(L2CError, match=r"^Wan 2\.2's two experts \(transformer_2 with boundary_ratio\) are not "
                                       r"supported: it would take a plan whose calls name their expert, .*schedule and "
                                       r"router rows per expert's blocks") as info:
        compile_pipeline(experts)
    assert "\n" not in str(info.value)
    with pytest.raises(L2CError, match=r"^WanPipeline with expand_timesteps \(Wan 2\.2 TI2V"):
        compile_pipeline(WanPipeline(**parts, scheduler=pipe.scheduler, expand_timesteps=True))
    with pytest.raises(L2CError, match=r"^WanPipeline samples with flow matching \(velocity\); its DDIMScheduler is "
                                       r"not a flow-matching scheduler$"):
        compile_pipeline(WanPipeline(**parts, scheduler=DDIMScheduler()))
    with pytest.raises(L2CError, match=r"^memory_budget is for drop-ins that plan their memory \(WanPipeline\), not "
                                       r"StableDiffusion3Pipeline$"):
        compile_pipeline(tiny_sd3_pipeline(tmp_path, encoders=False), memory_budget=2**30)


def test_a_call_whose_cache_and_weights_do_not_fit_is_refused_before_any_work(pipes, monkeypatch):
    """The planned cache (its liveness peak × entry bytes × videos) plus the sampler's copy of the
    weights against a budget: refused in one line before the prompt is encoded or anything compiled."""
    pipe, _ = pipes["unipc"]
    model, plan, sched = _schedule(pipe)
    peak = planned_cache(model, plan, sched).peak_bytes_per_sample
    weights = weights_bytes(pipe.transformer)
    calls = []
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: calls.append(1))
    kw = dict(prompt=["a cat", "a dog"], **SIZE, num_frames=9, num_inference_steps=6, output_type="latent")
    compiled = compile_pipeline(pipe, sched, memory_budget=weights + 2 * peak - 1)  # one byte short for 2 videos
    with pytest.raises(L2CError, match=r"^this call needs \S+ [KMG]iB \(\S+ [KMG]iB cache peak \+ \S+ [KMG]iB weights "
                                       r"copy\) but \S+ [KMG]iB are in the memory budget: draw fewer frames") as info:
        compiled(**kw)
    assert "\n" not in str(info.value) and not calls and not compiled.samplers
    shared = compile_pipeline(pipe, sched, share_weights=True)  # no copy of the weights to plan for
    assert shared.planned_bytes(6, True, WAN_T5_LEN, 9, 32, 48, 2) == {"cache peak": 2 * peak}
    assert compiled.planned_bytes(6, True, WAN_T5_LEN, 9, 32, 48, 2) == {"cache peak": 2 * peak,
                                                                          "weights copy": weights}
    # without a budget the device's free memory is the limit: a machine with less than that refuses too
    import l2c_compile.compiler.memory as memory

    monkeypatch.setattr(memory, "free_memory", lambda device: weights + peak)
    with pytest.raises(L2CError, match=r"[KMG]?i?B are free on cpu: draw fewer frames"):
        compile_pipeline(pipe, sched)(**kw)
    assert not calls


def test_free_memory_reads_the_machine():
    free = free_memory("cpu")
    assert free is None or free > 0  # MemAvailable where /proc/meminfo has it
    assert free_memory("meta") is None


def test_a_trunk_reuse_is_planned_as_the_compiler_measures_it():
    """A cache-dit-style step mask (calls that reuse the whole trunk): the planned peak is the
    compiled sampler's, the one trunk slot sized as the residual stream."""
    import l2c_compile
    from l2c_compile.samplers import make_plan
    from l2c_compile.schedule import baseline

    model = DiffusersWan(tiny_wan_transformer(0), text_len=WAN_TEXT_LEN, num_frames=9, **SIZE)
    plan = make_plan("unipc-flow", 6, shift=3.0)
    sched = baseline("step-mask", plan, family_of(model).layout(model), model="x", first=1, last=1, every=2)
    assert any(c.trunk for c in sched.calls)
    planned = planned_cache(model, plan, sched, cfg=False)
    record = l2c_compile.compile(model, plan, sched, cfg=False).record
    assert (planned.peak_entries, planned.peak_bytes_per_sample) == (record.peak_live_cache_entries,
                                                                     record.peak_cache_bytes_per_image)
    assert record.peak_cache_bytes_per_image > 0
