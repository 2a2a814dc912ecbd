"""``compile_pipeline``: a diffusers ``DiTPipeline``, ``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline`` or ``StableDiffusion3Pipeline`` whose denoising loop is compiled code.

The returned :class:`CompiledPipeline` takes the pipeline's own arguments and returns its own
output type. Noise is drawn exactly as the pipeline draws it (same generator, shape, device and
dtype); the loop is a :class:`~l2c_compile.runtime.sampler.CompiledSampler` over a
:class:`~l2c_compile.samplers.base.SamplerPlan` made from the pipeline's scheduler (its timestep
spacing and its update, including how it steps past t = 0); CFG is the pipeline's
(``u + s · (c − u)`` on the ε channels, only when ``guidance_scale > 1``); the latents are decoded
with the pipeline's own VAE. Sources: diffusers ``DiTPipeline.__call__``, ``DDIMScheduler.step``.

PixArt (text-to-image, :class:`CompiledPixArtPipeline`): the prompt is encoded by the pipeline's
own ``encode_prompt`` (its T5 encoder and tokenizer, or the ``prompt_embeds`` given), the
negative prompt is the unconditional half of the batch, the scheduler is its
``DPMSolverMultistepScheduler`` (DPM-Solver++ 2M, :mod:`~l2c_compile.samplers.dpm_solver_pp`),
and the decoded image goes through the pipeline's image processor (resolution binning included).
Sources: diffusers ``PixArtAlphaPipeline.__call__``, ``DPMSolverMultistepScheduler.step``.

Stable Diffusion 3 / 3.5 (:class:`CompiledSD3Pipeline`): a flow-matching (velocity) pipeline. The
prompt is encoded by the pipeline's ``encode_prompt`` (CLIP-L, CLIP-G and T5, or the
``prompt_embeds`` + ``pooled_prompt_embeds`` given) and packed into one condition
(:func:`~l2c_compile.diffusers.sd3.pack_condition`); the loop is a plan made from its
``FlowMatchEulerDiscreteScheduler`` (static ``shift``, or the dynamic shift's μ computed from the
image size as the pipeline computes it); the latents are decoded as the pipeline decodes them
(``latents / scaling_factor + shift_factor``, its VAE, its image processor). Sources: diffusers
``StableDiffusion3Pipeline.__call__``, ``FlowMatchEulerDiscreteScheduler.step``.

Which scheduler family a drop-in runs is a class attribute (``flow_matching``): ε pipelines refuse
a flow-matching scheduler, the SD3 pipeline requires one.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.pipelines.stable_diffusion_3.pipeline_output import StableDiffusion3PipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from l2c_compile.compiler.driver import check_schedule_type
from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers.dit import DiffusersDiT
from l2c_compile.diffusers.flow_schedulers import is_flow_scheduler
from l2c_compile.diffusers.pixart import DiffusersPixArt, pack_condition
from l2c_compile.diffusers.scheduler_plans import pipeline_plan
from l2c_compile.diffusers.sd3 import DiffusersSD3, shift_mu
from l2c_compile.diffusers.sd3 import pack_condition as pack_sd3_condition
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

__all__ = ["PIPELINES", "CompiledPipeline", "CompiledPixArtPipeline", "CompiledSD3Pipeline", "compile_pipeline",
           "pipeline_plan"]


class CompiledPipeline:
    """``pipe(...)`` with the denoising loop compiled for one schedule (see the module docstring).

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off) and kept.
    """

    # Whether the pipeline samples with a flow-matching (velocity) scheduler; False: a VP scheduler
    # with ε prediction. compile_pipeline refuses a pipeline whose scheduler is of the other sort.
    flow_matching: ClassVar[bool] = False

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        self.pipe = pipe
        self.schedule = schedule
        self.model = DiffusersDiT(pipe.transformer)
        self.compile_kwargs = compile_kwargs
        self.samplers: dict[tuple[int, bool], CompiledSampler] = {}

    def check_scheduler(self) -> None:
        """L2CError now, not on the first call, when the pipeline's scheduler or one of its
        settings has no compiled plan."""
        pipeline_plan(self.pipe.scheduler, 1)

    def _plan(self, num_inference_steps: int, **plan_kwargs: Any) -> tuple[SamplerPlan, Schedule | None]:
        """The pipeline scheduler's plan for these steps (``plan_kwargs``: ``mu``, ``sigmas`` for
        :func:`pipeline_plan`) and the schedule; L2CError when the schedule was made for another
        NFE or sampler (the rest of :meth:`~l2c_compile.schedule.Schedule.check_fits` runs when
        the sampler is compiled)."""
        plan = pipeline_plan(self.pipe.scheduler, num_inference_steps, **plan_kwargs)
        sched = self.schedule
        if sched is not None and (sched.nfe != plan.nfe or sched.sampler != plan.sampler):
            raise L2CError(f"the schedule is for {sched.sampler} with {sched.nfe} NFE, the pipeline runs "
                           f"{plan.sampler} with num_inference_steps={num_inference_steps}")
        return plan, sched

    def sampler(self, num_inference_steps: int, cfg: bool) -> CompiledSampler:
        """The compiled sampler for ``num_inference_steps`` steps (L2CError when it does not fit
        the schedule's NFE or sampler)."""
        key = (num_inference_steps, cfg)
        if key not in self.samplers:
            plan, sched = self._plan(num_inference_steps)
            transformer = self.pipe.transformer
            info = spec_from_config(type(transformer).__name__, dict(transformer.config)).to_dict()
            self.samplers[key] = compile_sampler(self.model, plan, sched, cfg=cfg, model_info=info,
                                                 **self.compile_kwargs)
        return self.samplers[key]

    def noise(self, batch: int, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """The initial latents (batch, C, H, W), drawn as ``DiTPipeline`` draws them."""
        pipe = self.pipe
        size, channels = pipe.transformer.config.sample_size, pipe.transformer.config.in_channels
        return randn_tensor(shape=(batch, channels, size, size), generator=generator,
                            device=pipe._execution_device, dtype=pipe.transformer.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, output_type: str | None = "pil") -> Any:
        """Final latents (N, C, H, W) → images with the pipeline's VAE: a (N, 3, H', W') tensor in
        [0, 1] for ``"pt"``, else (N, H', W', 3) numpy, as PIL images for ``"pil"``."""
        pipe = self.pipe
        latents = latents.to(pipe.vae.dtype)
        samples = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        samples = (samples / 2 + 0.5).clamp(0, 1)
        if output_type != "pt":
            samples = samples.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                samples = pipe.numpy_to_pil(samples)
        return samples

    @torch.no_grad()
    def __call__(self, class_labels: list[int], guidance_scale: float = 4.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, num_inference_steps: int = 50,
                 output_type: str | None = "pil", return_dict: bool = True) -> ImagePipelineOutput | tuple:
        """Arguments and output as ``DiTPipeline.__call__``: ``.images`` (N, H, W, 3) in [0, 1]."""
        cfg = guidance_scale > 1
        sampler = self.sampler(num_inference_steps, cfg)
        noise = self.noise(len(class_labels), generator)
        labels = torch.tensor(class_labels, device=noise.device).reshape(-1)
        device = next(sampler.model.parameters()).device  # the sampler's copy may live elsewhere
        latents = sampler(noise.to(device), labels.to(device), guidance_scale if cfg else None)
        samples = self.decode(latents, output_type)
        return ImagePipelineOutput(images=samples) if return_dict else (samples,)


class CompiledPixArtPipeline(CompiledPipeline):
    """``pipe(...)`` of a PixArt-α/Σ pipeline with the denoising loop compiled for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off, prompt
    length, latent side) and kept. The adapter for each is a
    :class:`~l2c_compile.diffusers.pixart.DiffusersPixArt` over the pipeline's transformer.
    """

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        self.pipe = pipe
        self.schedule = schedule
        self.compile_kwargs = compile_kwargs
        self.samplers: dict[tuple[int, ...], CompiledSampler] = {}
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


class CompiledSD3Pipeline(CompiledPipeline):
    """``pipe(...)`` of a ``StableDiffusion3Pipeline`` (SD3 / SD3.5) with the denoising loop compiled
    for one schedule.

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off, joint prompt
    length, image side, the σ schedule's ``mu`` and ``sigmas``) and kept. The adapter for each is a
    :class:`~l2c_compile.diffusers.sd3.DiffusersSD3` over the pipeline's transformer.
    """

    flow_matching = True

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        self.pipe = pipe
        self.schedule = schedule
        self.compile_kwargs = compile_kwargs
        self.samplers: dict[tuple[Any, ...], CompiledSampler] = {}

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
        with _pipeline_errors():  # the pipeline's own input rules, one line each
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
        with _pipeline_errors((ValueError, TypeError)):  # the negative prompt's type and batch rules
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
        with _pipeline_errors():  # a generator list of the wrong length
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


@contextlib.contextmanager
def _pipeline_errors(kinds: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """The errors of ``kinds`` a pipeline raises for bad input, as one L2CError
    line (its first sentence before diffusers' "Please …" advice)."""
    try:
        yield
    except kinds as exc:
        raise L2CError(str(exc).splitlines()[0].split(" Please")[0].strip()) from None


def _aspect_ratio_bins(pipe: Any) -> dict[str, list[float]] | None:
    """The pipeline's resolution-binning table for its transformer's sample_size (None: none)."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as alpha
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_sigma as sigma

    tables = {128: alpha.ASPECT_RATIO_1024_BIN, 64: alpha.ASPECT_RATIO_512_BIN, 32: alpha.ASPECT_RATIO_256_BIN}
    if type(pipe).__name__ == "PixArtSigmaPipeline":
        tables[256] = sigma.ASPECT_RATIO_2048_BIN
    return tables.get(int(pipe.transformer.config.sample_size))


PIPELINES = {"DiTPipeline": CompiledPipeline, "PixArtAlphaPipeline": CompiledPixArtPipeline,
             "PixArtSigmaPipeline": CompiledPixArtPipeline, "StableDiffusion3Pipeline": CompiledSD3Pipeline}


def compile_pipeline(pipe: Any, schedule: Schedule | None = None, **compile_kwargs: Any) -> CompiledPipeline:
    """A drop-in for ``pipe`` (a diffusers ``DiTPipeline``, ``PixArtAlphaPipeline``,
    ``PixArtSigmaPipeline`` or ``StableDiffusion3Pipeline``: :data:`PIPELINES`) running ``schedule``
    (None: compute everything) as compiled code; ``compile_kwargs`` go to
    :func:`l2c_compile.compile` (``fuse``, ``backend``, ``cuda_graph``, ``dtype``, ``device``: those
    two apply to the compiled sampler's own copy of the weights; the pipeline and its components are
    never changed). L2CError for an unsupported pipeline or scheduler, or a scheduler of the other
    sort (a flow-matching one for an ε pipeline, a VP one for SD3)."""
    cls = next((PIPELINES[c.__name__] for c in type(pipe).__mro__ if c.__name__ in PIPELINES), None)
    if cls is None:
        raise L2CError(f"compile_pipeline supports {', '.join(PIPELINES)}, got {type(pipe).__name__}")
    for key in ("cfg", "model_info"):
        if key in compile_kwargs:
            raise L2CError(f"compile_pipeline sets {key} itself (from guidance_scale and the pipeline)")
    name, scheduler = type(pipe).__name__, type(pipe.scheduler).__name__
    if is_flow_scheduler(pipe.scheduler) != cls.flow_matching:
        raise L2CError(f"{name} samples with flow matching (velocity); its {scheduler} is not a flow-matching "
                       "scheduler" if cls.flow_matching else
                       f"{name} samples with ε prediction; its {scheduler} is a flow-matching (velocity) scheduler")
    compiled = cls(pipe, schedule, compile_kwargs)
    compiled.check_scheduler()  # an unsupported scheduler or setting fails here, not on the first call
    check_schedule_type(schedule)
    return compiled
