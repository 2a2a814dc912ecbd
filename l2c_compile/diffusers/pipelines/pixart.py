"""PixArt-α / Σ (text-to-image): :class:`CompiledPixArtPipeline`.

The prompt is encoded by the pipeline's own ``encode_prompt`` (its T5 encoder and tokenizer, or
the ``prompt_embeds`` given), the negative prompt is the unconditional half of the batch, the
scheduler is its ``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M,
:mod:`~l2c_compile.samplers.dpm_solver_pp`), and the decoded image goes through the pipeline's
image processor (resolution binning included). Sources: diffusers ``PixArtAlphaPipeline.__call__``,
``DPMSolverMultistepScheduler.step``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers.pipelines.base import CompiledPipeline
from l2c_compile.diffusers.pixart import DiffusersPixArt, pack_condition
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.schedule import Schedule

__all__ = ["CompiledPixArtPipeline"]


class CompiledPixArtPipeline(CompiledPipeline):
    """``pipe(...)`` of a PixArt-α/Σ pipeline with the denoising loop compiled for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off, prompt
    length, latent side) and kept. The adapter for each is a
    :class:`~l2c_compile.diffusers.pixart.DiffusersPixArt` over the pipeline's transformer.
    """

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        super().__init__(pipe, schedule, compile_kwargs)
        default = inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
        self.max_sequence_length = int(default)

    def pixart_sampler(self, num_inference_steps: int, cfg: bool, text_len: int, side: int) -> CompiledSampler:
        """The compiled sampler for these settings (``side``: image side in pixels); L2CError when
        they do not fit the schedule's NFE or sampler."""
        key = (num_inference_steps, cfg, text_len, side)
        if key not in self.samplers:
            plan, sched = self._plan(num_inference_steps)
            transformer = self.pipe.transformer
            model = DiffusersPixArt(transformer, text_len=text_len, height=side, width=side,
                                    vae_scale_factor=self.pipe.vae_scale_factor)
            info = spec_from_config(type(transformer).__name__, dict(transformer.config)).to_dict()
            info["pixart"] = {"text_len": text_len, "height": side, "width": side,
                              "vae_scale_factor": self.pipe.vae_scale_factor}
            self.samplers[key] = compile_sampler(model, plan, sched, cfg=cfg, model_info=info,
                                                 **self.compile_kwargs)
        return self.samplers[key]

    def size(self, height: int | None, width: int | None, binning: bool) -> tuple[int, int, int]:
        """(side the model draws, requested height, requested width), as the pipeline resolves
        them (resolution binning maps the request to its bin; only square sizes are supported)."""
        pipe = self.pipe
        side = pipe.transformer.config.sample_size * pipe.vae_scale_factor
        height, width = height or side, width or side
        if binning:
            bins = _aspect_ratio_bins(pipe)
            if bins is None:
                raise L2CError(f"resolution binning has no table for sample_size "
                               f"{pipe.transformer.config.sample_size}: pass use_resolution_binning=False")
            h, w = pipe.image_processor.classify_height_width_bin(height, width, ratios=bins)
        else:
            h, w = height, width
        if h != w:
            raise L2CError(f"compile_pipeline draws square images only, this call asks for {h}×{w}")
        return int(h), int(height), int(width)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str = "",
                 num_inference_steps: int = 20, guidance_scale: float = 4.5, num_images_per_prompt: int = 1,
                 height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 prompt_embeds: torch.Tensor | None = None, prompt_attention_mask: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_attention_mask: torch.Tensor | None = None, output_type: str | None = "pil",
                 return_dict: bool = True, clean_caption: bool = True, use_resolution_binning: bool = True,
                 max_sequence_length: int | None = None) -> ImagePipelineOutput | tuple:
        """Arguments and output as ``PixArtAlphaPipeline.__call__`` (``PixArtSigmaPipeline``'s):
        ``.images`` as PIL images, a (N, H, W, 3) numpy array in [0, 1] (``"np"``), a
        (N, 3, H, W) tensor (``"pt"``) or the final latents (``"latent"``). L2CError for inputs
        the pipeline would refuse (no prompt and no embeddings, an embedding without its mask)."""
        pipe = self.pipe
        side, orig_h, orig_w = self.size(height, width, use_resolution_binning)
        try:  # the pipeline's own input rules, one line each
            pipe.check_inputs(prompt, side, side, negative_prompt, 1, prompt_embeds, negative_prompt_embeds,
                              prompt_attention_mask, negative_prompt_attention_mask)
        except ValueError as exc:
            raise L2CError(str(exc).splitlines()[0].split(" Please")[0]) from None
        cfg = guidance_scale > 1.0
        device = pipe._execution_device
        pe, pm, ne, nm = pipe.encode_prompt(
            prompt, cfg, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
            device=device, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask, negative_prompt_attention_mask=negative_prompt_attention_mask,
            clean_caption=clean_caption, max_sequence_length=max_sequence_length or self.max_sequence_length)
        y = pack_condition(pe, pm)  # (N, L, D + 1)
        if cfg:
            y = torch.stack([y, pack_condition(ne, nm)], dim=1)  # (N, 2, L, D + 1)
        sampler = self.pixart_sampler(num_inference_steps, cfg, int(pe.shape[1]), side)
        channels, latent = pipe.transformer.config.in_channels, side // pipe.vae_scale_factor
        noise = randn_tensor((pe.shape[0], channels, latent, latent), generator=generator, device=device,
                             dtype=pe.dtype) * pipe.scheduler.init_noise_sigma
        weights = next(sampler.model.parameters())  # the sampler's copy may live elsewhere
        latents = sampler(noise.to(weights.device), y.to(weights.device), guidance_scale if cfg else None)
        if output_type == "latent":
            images = latents
        else:
            images = pipe.vae.decode(latents.to(device, pipe.vae.dtype) / pipe.vae.config.scaling_factor,
                                     return_dict=False)[0]
            if use_resolution_binning:
                images = pipe.image_processor.resize_and_crop_tensor(images, orig_w, orig_h)
            images = pipe.image_processor.postprocess(images, output_type=output_type)
        return ImagePipelineOutput(images=images) if return_dict else (images,)


def _aspect_ratio_bins(pipe: Any) -> dict[str, list[float]] | None:
    """The pipeline's resolution-binning table for its transformer's sample_size (None: none)."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    tables = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 32: alpha.ASPECT_RATIO_256_BIN}
    if type(pipe).__name__ == "PixArtSigmaPipeline":
        tables[256] = sigma.ASPECT_RATIO_2048_BIN
    return tables.get(int(pipe.transformer.config.sample_size))
