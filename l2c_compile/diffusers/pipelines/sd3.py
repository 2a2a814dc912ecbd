"""Stable Diffusion 3 / 3.5: :class:`CompiledSD3Pipeline`, a flow-matching (velocity) pipeline.

The prompt is encoded by the pipeline's ``encode_prompt`` (CLIP-L, CLIP-G and T5, or the
``prompt_embeds`` + ``pooled_prompt_embeds`` given) and packed into one condition
(:func:`~l2c_compile.diffusers.sd3.pack_condition`); the loop is a plan made from its
``FlowMatchEulerDiscreteScheduler`` (static ``shift``, or the dynamic shift's μ computed from the
image size as the pipeline computes it); the latents are decoded as the pipeline decodes them
(``latents / scaling_factor + shift_factor``, its VAE, its image processor). Sources: diffusers
``StableDiffusion3Pipeline.__call__``, ``FlowMatchEulerDiscreteScheduler.step``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers.pipelines.base import CompiledPipeline, pipeline_errors
from l2c_compile.diffusers.scheduler_plans import pipeline_plan
from l2c_compile.diffusers.sd3 import DiffusersSD3, shift_mu
from l2c_compile.diffusers.sd3 import pack_condition as pack_sd3_condition
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler

__all__ = ["CompiledSD3Pipeline"]


class CompiledSD3Pipeline(CompiledPipeline):
    """``pipe(...)`` of a ``StableDiffusion3Pipeline`` (SD3 / SD3.5) with the denoising loop compiled
    for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off, joint prompt
    length, image side, the σ schedule's ``mu`` and ``sigmas``) and kept. The adapter for each is a
    :class:`~l2c_compile.diffusers.sd3.DiffusersSD3` over the pipeline's transformer.
    """

    flow_matching = True

    def check_scheduler(self) -> None:
        """L2CError now when the scheduler has no compiled plan (checked at the default image size,
        whose μ a dynamically shifting scheduler needs)."""
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        pipeline_plan(self.pipe.scheduler, 1, mu=self.shift_mu(side, side))

    def shift_mu(self, height: int, width: int, mu: float | None = None) -> float | None:
        """The μ the pipeline hands its scheduler for a ``height`` × ``width`` image (pixels): None
        for a static shift, else ``mu`` or its ``calculate_shift`` of the latent patch count
        (:func:`~l2c_compile.diffusers.sd3.shift_mu`)."""
        pipe = self.pipe
        f = pipe.vae_scale_factor
        return shift_mu(pipe.scheduler.config, pipe.transformer.config.patch_size, height // f, width // f, mu)

    def sd3_sampler(self, num_inference_steps: int, cfg: bool, text_len: int, side: int, *,
                    mu: float | None = None, sigmas: Sequence[float] | None = None) -> CompiledSampler:
        """The compiled sampler for these settings (``text_len``: joint prompt tokens; ``side``:
        image side in pixels; ``mu``, ``sigmas``: what the pipeline passes its scheduler, see
        :meth:`shift_mu`); L2CError when they do not fit the schedule's NFE or sampler."""
        sig = None if sigmas is None else tuple(float(s) for s in sigmas)
        key = (num_inference_steps, cfg, text_len, side, mu, sig)
        if key not in self.samplers:
            plan, sched = self._plan(num_inference_steps, mu=mu, sigmas=sig)
            transformer = self.pipe.transformer
            model = DiffusersSD3(transformer, text_len=text_len, height=side, width=side,
                                 vae_scale_factor=self.pipe.vae_scale_factor)
            info = spec_from_config(type(transformer).__name__, dict(transformer.config), text_len).to_dict()
            info["sd3"] = model.record()
            self.samplers[key] = compile_sampler(model, plan, sched, cfg=cfg, model_info=info,
                                                 **self.compile_kwargs)
        return self.samplers[key]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 prompt_3: str | list[str] | None = None, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas: list[float] | None = None, guidance_scale: float = 7.0,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 negative_prompt_3: str | list[str] | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, clip_skip: int | None = None, max_sequence_length: int = 256,
                 mu: float | None = None) -> StableDiffusion3PipelineOutput | tuple:
        """Arguments and output as ``StableDiffusion3Pipeline.__call__``: ``.images`` as PIL images,
        a (N, H, W, 3) numpy array in [0, 1] (``"np"``), a (N, 3, H, W) tensor (``"pt"``) or the
        final latents (N, C, H/f, W/f) (``"latent"``); N = prompts × ``num_images_per_prompt``.
        ``prompt_embeds`` (N, L, D) go with ``pooled_prompt_embeds`` (N, P), the negative ones
        likewise. L2CError for inputs the pipeline refuses (no prompt and no embeddings, embeddings
        without their pooled ones, a size not divisible by the patch), for a non-square size, and
        for given ``prompt_embeds`` with ``num_images_per_prompt`` > 1 (the pipeline does not
        repeat them and fails on the batch)."""
        pipe = self.pipe
        default = pipe.default_sample_size * pipe.vae_scale_factor
        height, width = height or default, width or default
        with pipeline_errors():  # the pipeline's own input rules, one line each
            pipe.check_inputs(prompt, prompt_2, prompt_3, height, width, negative_prompt=negative_prompt,
                              negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                              prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                              pooled_prompt_embeds=pooled_prompt_embeds,
                              negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                              max_sequence_length=max_sequence_length)
        if height != width:
            raise L2CError(f"compile_pipeline draws square images only, this call asks for {height}×{width}")
        if prompt_embeds is not None and num_images_per_prompt != 1:
            raise L2CError(f"StableDiffusion3Pipeline does not repeat given prompt_embeds for "
                           f"num_images_per_prompt={num_images_per_prompt}: repeat them, or pass the prompt")
        cfg = guidance_scale > 1.0
        device = pipe._execution_device
        with pipeline_errors((ValueError, TypeError)):  # the negative prompt's type and batch rules
            pe, ne, pooled, neg_pooled = pipe.encode_prompt(
                prompt=prompt, prompt_2=prompt_2, prompt_3=prompt_3, negative_prompt=negative_prompt,
                negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3,
                do_classifier_free_guidance=cfg, prompt_embeds=prompt_embeds,
                negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
                negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, device=device, clip_skip=clip_skip,
                num_images_per_prompt=num_images_per_prompt, max_sequence_length=max_sequence_length)
        y = pack_sd3_condition(pe, pooled)  # (N, L + 1, W)
        if cfg:  # the pipeline batches [negative, prompt]; the compiled step [prompt, negative]
            y = torch.stack([y, pack_sd3_condition(ne, neg_pooled, width=y.shape[-1])], dim=1)  # (N, 2, L + 1, W)
        with pipeline_errors():  # a generator list of the wrong length
            noise = pipe.prepare_latents(pe.shape[0], pipe.transformer.config.in_channels, height, width, pe.dtype,
                                         device, generator, latents)  # (N, C, H/f, W/f)
        steps = len(sigmas) if sigmas is not None else num_inference_steps  # as retrieve_timesteps counts
        sampler = self.sd3_sampler(steps, cfg, int(pe.shape[1]), height, mu=self.shift_mu(height, width, mu),
                                   sigmas=sigmas)
        weights = next(sampler.model.parameters())  # the sampler's copy may live elsewhere
        latents = sampler(noise.to(weights.device), y.to(weights.device), guidance_scale if cfg else None)
        if output_type == "latent":
            images = latents
        else:
            vae = pipe.vae
            latents = latents.to(device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            images = pipe.image_processor.postprocess(vae.decode(latents, return_dict=False)[0],
                                                      output_type=output_type)
        pipe.maybe_free_model_hooks()
        return StableDiffusion3PipelineOutput(images=images) if return_dict else (images,)
