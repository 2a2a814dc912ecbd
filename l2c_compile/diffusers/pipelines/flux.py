"""FLUX.1 dev / schnell: :class:`CompiledFluxPipeline`, a flow-matching (velocity) pipeline.

The prompt is encoded by the pipeline's ``encode_prompt`` (CLIP's pooled output and T5, or the
``prompt_embeds`` + ``pooled_prompt_embeds`` given) and packed into one condition with the
embedded guidance scale (:func:`~l2c_compile.diffusers.flux.pack_condition`; FLUX.1-dev's
``guidance_embeds``, none for schnell). True classifier-free guidance (``true_cfg_scale`` > 1 with
a negative prompt) runs as the compiled sampler's batched CFG: the pipeline's two transformer calls
``neg + s · (pos − neg)`` are one call on ``[prompt, negative]``, combined by
:meth:`~l2c_compile.diffusers.flux.DiffusersFlux.guide` as ``u + s · (c − u)`` — the same sum. The
noise is the pipeline's ``prepare_latents`` (drawn unpacked, then packed; unpacked here for the
adapter), the loop the plan of its ``FlowMatchEulerDiscreteScheduler`` over its σ schedule
(``linspace(1, 1/N, N)`` and the dynamic shift's μ from the image's packed token count:
:func:`~l2c_compile.diffusers.flux.flux_plan`); the latents are decoded as the pipeline decodes
them (unpacked, ``latents / scaling_factor + shift_factor``, its VAE, its image processor).
Sources: diffusers ``FluxPipeline.__call__`` (``pipelines/flux/pipeline_flux.py``),
``FlowMatchEulerDiscreteScheduler.step``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers.flux import DiffusersFlux, check_prompt_length, flux_plan
from l2c_compile.diffusers.flux import pack_condition as pack_flux_condition
from l2c_compile.diffusers.pipelines.base import CompiledPipeline, pipeline_errors
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule
from l2c_compile.schedule.sizes import check_sample_size

__all__ = ["CompiledFluxPipeline"]


class CompiledFluxPipeline(CompiledPipeline):
    """``pipe(...)`` of a ``FluxPipeline`` (FLUX.1 dev or schnell) with the denoising loop compiled
    for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, true CFG on/off, T5
    prompt length, image side, the ``sigmas`` given) and kept; the side fixes μ. The adapter for
    each is a :class:`~l2c_compile.diffusers.flux.DiffusersFlux` over the pipeline's transformer.
    """

    flow_matching = True

    def check_scheduler(self) -> None:
        """L2CError now when the scheduler has no compiled plan (checked at the default image size)."""
        side = self.latent_side(self.pipe.default_sample_size * self.pipe.vae_scale_factor)
        flux_plan(self.pipe.scheduler, 1, side, side)

    def latent_side(self, pixels: int) -> int:
        """The latent side the pipeline makes for an image side of ``pixels``: ``2 · (pixels // 2f)``
        (``FluxPipeline.prepare_latents``; a side that is no multiple of 2f is rounded down, as the
        pipeline does after its warning)."""
        return 2 * (int(pixels) // (2 * self.pipe.vae_scale_factor))

    def _plan(self, num_inference_steps: int, **plan_kwargs: Any) -> tuple[SamplerPlan, Schedule | None]:
        """The pipeline's plan for these steps (``plan_kwargs``: ``side``, the latent side, and
        ``sigmas``; :func:`~l2c_compile.diffusers.flux.flux_plan`) and the schedule, checked by
        :meth:`~l2c_compile.diffusers.pipelines.base.CompiledPipeline._check_schedule` (the
        name check tells FLUX.1-schnell's schedule from dev's)."""
        side = plan_kwargs["side"]
        plan = flux_plan(self.pipe.scheduler, num_inference_steps, side, side, sigmas=plan_kwargs.get("sigmas"))
        return plan, self._check_schedule(plan, num_inference_steps)

    def flux_sampler(self, num_inference_steps: int, cfg: bool, text_len: int, side: int, *,
                     sigmas: Sequence[float] | None = None) -> CompiledSampler:
        """The compiled sampler for these settings (``text_len``: T5 prompt tokens; ``side``: latent
        side, fixing the image's token count and so μ; ``sigmas``: what the caller passes the
        pipeline); L2CError when they do not fit the schedule."""
        sig = None if sigmas is None else tuple(float(s) for s in sigmas)
        key = (num_inference_steps, cfg, text_len, side, sig)
        if key not in self.samplers:
            plan, sched = self._plan(num_inference_steps, side=side, sigmas=sig)
            pipe, transformer = self.pipe, self.pipe.transformer
            f = pipe.vae_scale_factor
            model = DiffusersFlux(transformer, text_len=text_len, height=side * f, vae_scale_factor=f)
            info = spec_from_config(type(transformer).__name__, dict(transformer.config), text_len,
                                    height=side * 8).to_dict()
            info["flux"] = model.record()
            self.samplers[key] = compile_sampler(model, plan, sched, cfg=cfg, model_info=info,
                                                 **self.compile_kwargs)
        return self.samplers[key]

    def _initial_latents(self, batch: int, height: int, width: int, dtype: torch.dtype, device: torch.device,
                         generator: Any, latents: torch.Tensor | None) -> torch.Tensor:
        """The pipeline's ``prepare_latents`` (packed (N, H·W/4, 4C): drawn, or ``latents`` as given)
        unpacked to (N, C, H, W). L2CError for given latents of another shape."""
        pipe = self.pipe
        channels = pipe.transformer.config.in_channels // 4
        side = self.latent_side(height)
        if latents is not None and tuple(latents.shape) != (batch, (side // 2) ** 2, 4 * channels):
            raise L2CError(f"latents must be packed as FluxPipeline.prepare_latents packs them, "
                           f"{(batch, (side // 2) ** 2, 4 * channels)} for {batch} images of {height}×{width}, got "
                           f"{tuple(latents.shape)}")
        with pipeline_errors():  # a generator list of the wrong length
            packed, _ = pipe.prepare_latents(batch, channels, height, width, dtype, device, generator, latents)
        return pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)  # (N, C, H/f, W/f)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, prompt_2: str | list[str] | None = None,
                 negative_prompt: str | list[str] | None = None, negative_prompt_2: str | list[str] | None = None,
                 true_cfg_scale: float = 1.0, height: int | None = None, width: int | None = None,
                 num_inference_steps: int = 28, sigmas: list[float] | None = None, guidance_scale: float = 3.5,
                 num_images_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 pooled_prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 negative_pooled_prompt_embeds: torch.Tensor | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, max_sequence_length: int = 512) -> Any:
        """Arguments and output as ``FluxPipeline.__call__`` (a ``FluxPipelineOutput``): ``.images``
        as PIL images, a (N, H, W, 3) numpy array in [0, 1] (``"np"``), a (N, 3, H, W) tensor
        (``"pt"``) or the final packed latents (N, H·W/(4f²), 4C) (``"latent"``); N = prompts ×
        ``num_images_per_prompt``. ``prompt_embeds`` (N, L, D) go with ``pooled_prompt_embeds``
        (N, P), the negative ones likewise; ``latents``, if given, packed as the pipeline packs
        them. ``guidance_scale`` is embedded (dev) or ignored (schnell); true CFG runs iff
        ``true_cfg_scale`` > 1 and a negative prompt or negative embeddings are given. L2CError for
        inputs the pipeline refuses (no prompt and no embeddings, embeddings without their pooled
        ones, ``max_sequence_length`` > 512, prompt and negative embeddings of different shapes), a
        prompt longer than ``max_sequence_length`` T5 tokens (the pipeline cuts it with a warning),
        a non-square size, a negative prompt batch other than the prompt's, and given
        ``prompt_embeds`` with ``num_images_per_prompt`` > 1 (the pipeline does not repeat them and
        fails on the batch)."""
        pipe = self.pipe
        default = pipe.default_sample_size * pipe.vae_scale_factor
        height, width = height or default, width or default
        with pipeline_errors():  # the pipeline's own input rules, one line each
            pipe.check_inputs(prompt, prompt_2, height, width, negative_prompt=negative_prompt,
                              negative_prompt_2=negative_prompt_2, prompt_embeds=prompt_embeds,
                              negative_prompt_embeds=negative_prompt_embeds,
                              pooled_prompt_embeds=pooled_prompt_embeds,
                              negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
                              max_sequence_length=max_sequence_length)
        side = self.latent_side(height)
        if side != self.latent_side(width):
            raise L2CError(f"compile_pipeline draws square images only, this call asks for {height}×{width}")
        if side < 2:
            raise L2CError(f"an image of {height}×{width} has no latent patch (the side must be at least "
                           f"{2 * pipe.vae_scale_factor} pixels)")
        check_sample_size(self.schedule, {"height": height, "width": width})  # a CLI schedule's recorded size
        if prompt_embeds is not None and num_images_per_prompt != 1:
            raise L2CError(f"FluxPipeline does not repeat given prompt_embeds for "
                           f"num_images_per_prompt={num_images_per_prompt}: repeat them, or pass the prompt")
        has_negative = negative_prompt is not None or (negative_prompt_embeds is not None
                                                       and negative_pooled_prompt_embeds is not None)
        cfg = true_cfg_scale > 1 and has_negative
        if cfg and prompt_embeds is not None and negative_prompt_embeds is not None \
                and prompt_embeds.shape != negative_prompt_embeds.shape:
            raise L2CError(f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                           f"{tuple(negative_prompt_embeds.shape)} must have the same shape")
        if prompt_embeds is None:
            check_prompt_length(pipe, prompt_2 or prompt, max_sequence_length)
        if cfg and negative_prompt_embeds is None:
            check_prompt_length(pipe, negative_prompt_2 or negative_prompt, max_sequence_length, "negative prompt")
        device = pipe._execution_device
        encode = dict(device=device, num_images_per_prompt=num_images_per_prompt,
                      max_sequence_length=max_sequence_length)
        pe, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=prompt_2, prompt_embeds=prompt_embeds,
                                           pooled_prompt_embeds=pooled_prompt_embeds, **encode)
        batch = int(pe.shape[0])
        guidance = guidance_scale if pipe.transformer.config.guidance_embeds else None
        y = pack_flux_condition(pe, pooled, guidance)  # (N, L + 1, W)
        if cfg:  # the pipeline's second pass, batched: [prompt, negative]
            ne, neg_pooled, _ = pipe.encode_prompt(prompt=negative_prompt, prompt_2=negative_prompt_2,
                                                   prompt_embeds=negative_prompt_embeds,
                                                   pooled_prompt_embeds=negative_pooled_prompt_embeds, **encode)
            if ne.shape != pe.shape:
                raise L2CError(f"the negative prompt encodes to {tuple(ne.shape)}, the prompt to {tuple(pe.shape)}: "
                               "give one negative prompt per prompt")
            y = torch.stack([y, pack_flux_condition(ne, neg_pooled, guidance, width=y.shape[-1])], 1)  # (N, 2, L + 1, W)
        noise = self._initial_latents(batch, height, width, pe.dtype, device, generator, latents)  # (N, C, H, W)
        steps = len(sigmas) if sigmas is not None else num_inference_steps  # as retrieve_timesteps counts
        sampler = self.flux_sampler(steps, cfg, int(pe.shape[1]), side, sigmas=sigmas)
        weights = next(sampler.model.parameters())  # the sampler's copy may live elsewhere
        out = sampler(noise.to(weights.device), y.to(weights.device), true_cfg_scale if cfg else None)
        out = out.to(device)  # (N, C, H, W)
        if output_type == "latent":
            images = pipe._pack_latents(out, *out.shape)  # (N, H·W/4, 4C), as the pipeline returns them
        else:
            vae = pipe.vae
            out = out.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
            images = pipe.image_processor.postprocess(vae.decode(out, return_dict=False)[0], output_type=output_type)
        pipe.maybe_free_model_hooks()
        from diffusers.pipelines.flux.pipeline_output import FluxPipelineOutput

        return FluxPipelineOutput(images=images) if return_dict else (images,)
