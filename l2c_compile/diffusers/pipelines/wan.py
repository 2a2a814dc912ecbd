"""Wan 2.1 text-to-video: :class:`CompiledWanPipeline`, a flow-matching (velocity) pipeline.

The pipeline's own ``check_inputs`` and size rounding (``num_frames − 1`` to a multiple of the VAE's
temporal factor, height and width to multiples of the spatial factor times the patch), its
``encode_prompt`` (umT5, zero-padded to ``max_sequence_length``), its ``prepare_latents`` (float32
``(N, C, F, H, W)``), a plan made from its scheduler (flow ``UniPCMultistepScheduler`` with
``flow_shift``, or ``FlowMatchEulerDiscreteScheduler``), CFG as the pipeline does it
(``u + s · (c − u)`` on the velocity, when ``guidance_scale > 1``; the prompt is the first half of the
batched condition, the negative prompt the second, :meth:`DiffusersWan.cfg_conditions`), and its
decoding: ``latents / (1 / latents_std) + latents_mean`` per channel, the Wan VAE, its video
processor. Before any work a call checks that the schedule's planned cache and the sampler's copy
of the weights fit the target device's free memory (:mod:`l2c_compile.compiler.memory`).
Sources: diffusers ``WanPipeline.__call__`` / ``check_inputs`` / ``encode_prompt`` /
``prepare_latents``, ``UniPCMultistepScheduler.step``.

Wan 2.2 (``transformer_2`` with ``boundary_ratio``: two experts, one per noise range; or
``expand_timesteps``: per-token timesteps of the TI2V 5B model) is refused in one line.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.compiler.driver import resolve_dtype
from l2c_compile.compiler.memory import check_memory, planned_cache, weights_bytes
from l2c_compile.diffusers.pipelines.base import CompiledPipeline, pipeline_errors
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.diffusers.wan import (
    TWO_EXPERTS,
    DiffusersWan,
    check_pipeline_config,
    decode_latents,
)
from l2c_compile.errors import L2CError
from l2c_compile.runtime.devices import resolve_device
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.schedule import Schedule
from l2c_compile.schedule.sizes import check_sample_size

__all__ = ["CompiledWanPipeline", "check_wan_pipeline"]

def check_wan_pipeline(pipe: Any) -> None:
    """L2CError (one line) for what the drop-in cannot run: Wan 2.2's two experts
    (``transformer_2`` or ``boundary_ratio`` set), per-token timesteps (``expand_timesteps``, Wan 2.2
    TI2V), no ``transformer``."""
    if getattr(pipe, "transformer_2", None) is not None:
        raise L2CError(TWO_EXPERTS)
    check_pipeline_config(pipe.config)
    if getattr(pipe, "transformer", None) is None:
        raise L2CError("this WanPipeline has no transformer")


class CompiledWanPipeline(CompiledPipeline):
    """``pipe(...)`` of a ``WanPipeline`` (Wan 2.1 text-to-video) with the denoising loop compiled
    for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off, prompt length,
    frames, height, width) and kept; each holds its own copy of the transformer's weights. The
    adapter for each is a :class:`~l2c_compile.diffusers.wan.DiffusersWan` over the pipeline's
    transformer. ``memory_budget``: bytes the planned cache and a new sampler's weights may take
    (None: the target device's free memory, :func:`~l2c_compile.compiler.memory.free_memory`).
    """

    flow_matching = True
    checks_memory: ClassVar[bool] = True

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        check_wan_pipeline(pipe)
        super().__init__(pipe, schedule, compile_kwargs)
        self.memory_budget: int | None = None

    def adapter(self, text_len: int, num_frames: int, height: int, width: int) -> DiffusersWan:
        """The adapter for a video of ``num_frames`` frames of ``height`` × ``width`` pixels and
        prompts of ``text_len`` tokens (L2CError for sizes the pipeline would round)."""
        pipe = self.pipe
        return DiffusersWan(pipe.transformer, text_len=text_len, num_frames=num_frames, height=height, width=width,
                            vae_scale_factor=pipe.vae_scale_factor_spatial,
                            vae_scale_factor_temporal=pipe.vae_scale_factor_temporal)

    def wan_sampler(self, num_inference_steps: int, cfg: bool, text_len: int, num_frames: int, height: int,
                    width: int) -> CompiledSampler:
        """The compiled sampler for these settings (sizes in frames and pixels); L2CError when
        they do not fit the schedule's NFE, sampler or sample size."""
        key = (num_inference_steps, cfg, text_len, num_frames, height, width)
        if key not in self.samplers:
            plan, sched = self._plan(num_inference_steps)
            model = self.adapter(text_len, num_frames, height, width)
            transformer = self.pipe.transformer
            info = spec_from_config(type(transformer).__name__, dict(transformer.config), text_len, height=height,
                                    width=width, num_frames=num_frames).to_dict()
            info["wan"] = model.record()
            self.samplers[key] = compile_sampler(model, plan, sched, cfg=cfg, model_info=info, **self.compile_kwargs)
        return self.samplers[key]

    def planned_bytes(self, num_inference_steps: int, cfg: bool, text_len: int, num_frames: int, height: int,
                      width: int, batch: int) -> dict[str, int]:
        """What a call with these settings adds to the target device, in bytes, before any work:
        ``{"cache peak": …, "weights copy": …}`` — the schedule's cache at its peak for ``batch``
        videos (:func:`~l2c_compile.compiler.memory.planned_cache`) and, when this setting's sampler
        is not compiled yet, the copy of the transformer's weights it will make (none with
        ``share_weights=True``: the sampler uses the transformer's own tensors)."""
        plan, sched = self._plan(num_inference_steps)
        model = self.adapter(text_len, num_frames, height, width)
        dtype = resolve_dtype(self.compile_kwargs.get("dtype"), self.device())
        need = {"cache peak": batch * planned_cache(model, plan, sched, cfg=cfg, dtype=dtype).peak_bytes_per_sample}
        copies = not self.compile_kwargs.get("share_weights", False)
        if copies and (num_inference_steps, cfg, text_len, num_frames, height, width) not in self.samplers:
            need["weights copy"] = weights_bytes(self.pipe.transformer, dtype)
        return need

    def device(self) -> torch.device:
        """Where the compiled samplers run: ``compile_kwargs["device"]``, else the transformer's."""
        device = self.compile_kwargs.get("device")
        return resolve_device(device) if device is not None else self.pipe.transformer.device

    def size(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """(frames, height, width) as ``WanPipeline.__call__`` rounds them: ``num_frames − 1`` down to
        a multiple of the VAE's temporal factor (at least 1 frame), the sides down to multiples of
        the spatial factor times the patch (the pipeline warns and rounds; so does this)."""
        pipe = self.pipe
        temporal = pipe.vae_scale_factor_temporal
        if num_frames % temporal != 1:
            num_frames = num_frames // temporal * temporal + 1
        num_frames = max(num_frames, 1)
        _, p_h, p_w = pipe.transformer.config.patch_size
        h_mult, w_mult = pipe.vae_scale_factor_spatial * p_h, pipe.vae_scale_factor_spatial * p_w
        return num_frames, height // h_mult * h_mult, width // w_mult * w_mult

    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
                 height: int = 480, width: int = 832, num_frames: int = 81, num_inference_steps: int = 50,
                 guidance_scale: float = 5.0, guidance_scale_2: float | None = None,
                 num_videos_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str | None = "np",
                 return_dict: bool = True, max_sequence_length: int = 512) -> WanPipelineOutput | tuple:
        """Arguments and output as ``WanPipeline.__call__``: ``.frames`` is a (N, F, H, W, 3) numpy
        array in [0, 1] (``"np"``), a (N, F, 3, H, W) tensor (``"pt"``), a list of N lists of PIL
        images (``"pil"``) or the final latents (N, C, F', H/8, W/8) (``"latent"``); N = prompts ×
        ``num_videos_per_prompt``. ``prompt_embeds`` (N, L, D) as ``encode_prompt`` returns them.
        L2CError, before any work, for inputs the pipeline refuses (no prompt and no embeddings,
        both, sides not divisible by 16, ``guidance_scale_2`` without Wan 2.2's experts, a
        generator list of the wrong length, a negative prompt batch of the wrong size), for given
        ``prompt_embeds`` with ``num_videos_per_prompt`` > 1 (which the pipeline does not repeat),
        for a schedule made for another step count, sampler or sample size, and when the planned
        cache plus the sampler's weights exceed the memory budget."""
        pipe = self.pipe
        with pipeline_errors():  # the pipeline's own input rules, one line each
            pipe.check_inputs(prompt, negative_prompt, height, width, prompt_embeds, negative_prompt_embeds, None,
                              guidance_scale_2)
        num_frames, height, width = self.size(num_frames, height, width)
        if prompt_embeds is not None and num_videos_per_prompt != 1:
            raise L2CError(f"WanPipeline does not repeat given prompt_embeds for num_videos_per_prompt="
                           f"{num_videos_per_prompt}: repeat them, or pass the prompt")
        batch = 1 if isinstance(prompt, str) else len(prompt) if prompt is not None else int(prompt_embeds.shape[0])
        batch *= num_videos_per_prompt
        cfg = guidance_scale > 1.0
        text_len = int(prompt_embeds.shape[1]) if prompt_embeds is not None else max_sequence_length
        check_sample_size(self.schedule, {"num_frames": num_frames, "height": height, "width": width})
        need = self.planned_bytes(num_inference_steps, cfg, text_len, num_frames, height, width, batch)
        check_memory(need, self.device(), self.memory_budget,
                     advice="draw fewer frames, a smaller size or fewer videos per call, or use a schedule that "
                            "keeps fewer cache entries alive")
        device = pipe._execution_device
        with pipeline_errors((ValueError, TypeError)):  # the negative prompt's type and batch rules
            pe, ne = pipe.encode_prompt(prompt=prompt, negative_prompt=negative_prompt, do_classifier_free_guidance=cfg,
                                        num_videos_per_prompt=num_videos_per_prompt, prompt_embeds=prompt_embeds,
                                        negative_prompt_embeds=negative_prompt_embeds,
                                        max_sequence_length=max_sequence_length, device=device)
        dtype = pipe.transformer.dtype
        y = pe.to(dtype)  # (N, L, D)
        if cfg:  # the pipeline calls the transformer with the prompt, then the negative prompt
            y = torch.stack([y, ne.to(dtype)], dim=1)  # (N, 2, L, D)
        with pipeline_errors():  # a generator list of the wrong length
            noise = pipe.prepare_latents(batch, pipe.transformer.config.in_channels, height, width, num_frames,
                                         torch.float32, device, generator, latents)  # (N, C, F', H/8, W/8)
        sampler = self.wan_sampler(num_inference_steps, cfg, int(y.shape[-2]), num_frames, height, width)
        weights = next(sampler.model.parameters())  # the sampler's copy may live elsewhere
        latents = sampler(noise.to(weights.device), y.to(weights.device), guidance_scale if cfg else None)
        video = latents if output_type == "latent" else self.decode(latents.to(device), output_type)
        pipe.maybe_free_model_hooks()
        return WanPipelineOutput(frames=video) if return_dict else (video,)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str | None = "np") -> Any:
        """Final latents (N, C, F', H', W') → frames as ``WanPipeline`` decodes them
        (:func:`~l2c_compile.diffusers.wan.decode_latents`, then its video processor;
        ``output_type`` ``"np"``, ``"pt"`` or ``"pil"``)."""
        return self.pipe.video_processor.postprocess_video(decode_latents(self.pipe, latents), output_type=output_type)
