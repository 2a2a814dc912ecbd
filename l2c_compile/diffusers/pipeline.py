"""``compile_pipeline``: a diffusers ``DiTPipeline`` whose denoising loop is compiled code.

The returned :class:`CompiledPipeline` takes the pipeline's own arguments and returns its own
output type. Noise is drawn exactly as the pipeline draws it (same generator, shape, device and
dtype); the loop is a :class:`~l2c_compile.runtime.CompiledSampler` over a
:class:`~l2c_compile.samplers.base.SamplerPlan` made from the pipeline's scheduler (its timestep
spacing and its update, including how it steps past t = 0); CFG is the pipeline's
(``u + s · (c − u)`` on the ε channels, only when ``guidance_scale > 1``); the latents are decoded
with the pipeline's own VAE. Sources: diffusers ``DiTPipeline.__call__``, ``DDIMScheduler.step``.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from l2c_compile.compiler import compile as compile_sampler
from l2c_compile.diffusers.dit import DiffusersDiT
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime import CompiledSampler
from l2c_compile.samplers.base import Combination, ModelCall, SamplerPlan, SolverStep
from l2c_compile.samplers.ddim import ddim_role
from l2c_compile.samplers.schedules import NOISE_SCHEDULES


def pipeline_plan(scheduler: Any, num_inference_steps: int) -> SamplerPlan:
    """The trajectory ``scheduler`` (a diffusers ``DDIMScheduler``, η = 0) takes in
    ``num_inference_steps`` steps, as a plan with the DDIM cadence of L2C.

    Coefficients come from the scheduler's own ᾱ table and its own ``prev_timestep`` rule
    (``t − T // N``, ᾱ_prev = ``final_alpha_cumprod`` below 0). L2CError for another scheduler or
    a setting that makes the update non-linear (clipping, thresholding, non-ε prediction).
    """
    if not isinstance(scheduler, DDIMScheduler):
        raise L2CError(f"compile_pipeline supports the DDIMScheduler, this pipeline has {type(scheduler).__name__}")
    cfg = scheduler.config
    bad = [name for name, ok in (("clip_sample", not cfg.clip_sample), ("thresholding", not cfg.thresholding),
                                 ("prediction_type", cfg.prediction_type == "epsilon")) if not ok]
    if bad:
        raise L2CError(f"DDIMScheduler setting {bad[0]}={getattr(cfg, bad[0])!r} is not supported "
                       "(the compiled update must be linear in x and ε)")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise L2CError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
    sched = copy.deepcopy(scheduler)
    try:
        sched.set_timesteps(num_inference_steps)
    except ValueError as exc:  # e.g. more steps than training timesteps
        raise L2CError(f"DDIMScheduler cannot take {num_inference_steps} steps: {exc}") from None
    ts = [int(t) for t in sched.timesteps]
    ac = [float(a) for a in sched.alphas_cumprod.double()]
    final = float(sched.final_alpha_cumprod)
    stride = cfg.num_train_timesteps // num_inference_steps
    n = len(ts)
    steps = []
    for i, t in enumerate(ts):
        ab, prev = ac[t], t - stride
        ab_prev = ac[prev] if prev >= 0 else final
        x_coef = math.sqrt(ab_prev) / math.sqrt(ab)
        eps_coef = math.sqrt(1.0 - ab_prev) - math.sqrt(ab_prev) * math.sqrt(1.0 - ab) / math.sqrt(ab)
        role, router_index = ddim_role(n - 1 - i, i)
        call = ModelCall(index=i, timestep=float(t), role=role, router_index=router_index)
        steps.append(SolverStep(calls=(call,), update=Combination(x_coef, ((i, eps_coef),))))
    # The coefficients come from the scheduler's own ᾱ; the plan's noise-schedule label names the
    # table for router training's q-sampling, and options keep what the scheduler actually used.
    schedule = cfg.beta_schedule if cfg.beta_schedule in NOISE_SCHEDULES else "linear"
    options = (("eta", 0.0), ("spacing", str(cfg.timestep_spacing)), ("scheduler", "DDIMScheduler"),
               ("beta_schedule", str(cfg.beta_schedule)))
    return SamplerPlan("ddim", n, tuple(steps), schedule, "discrete", options)


class CompiledPipeline:
    """``pipe(...)`` with the denoising loop compiled for one schedule (see the module docstring).

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off) and kept.
    """

    def __init__(self, pipe: Any, schedule: Any, compile_kwargs: dict[str, Any]) -> None:
        self.pipe = pipe
        self.schedule = schedule
        self.model = DiffusersDiT(pipe.transformer)
        self.compile_kwargs = compile_kwargs
        self.samplers: dict[tuple[int, bool], CompiledSampler] = {}

    def sampler(self, num_inference_steps: int, cfg: bool) -> CompiledSampler:
        """The compiled sampler for ``num_inference_steps`` steps (L2CError when it does not fit
        the schedule's NFE or sampler)."""
        key = (num_inference_steps, cfg)
        if key not in self.samplers:
            plan = pipeline_plan(self.pipe.scheduler, num_inference_steps)
            sched = self.schedule
            if sched is not None and (sched.nfe != plan.nfe or sched.sampler != plan.sampler):
                raise L2CError(f"the schedule is for {sched.sampler} with {sched.nfe} NFE, the pipeline runs "
                               f"{plan.sampler} with num_inference_steps={num_inference_steps}")
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


def compile_pipeline(pipe: Any, schedule: Any = None, **compile_kwargs: Any) -> CompiledPipeline:
    """A drop-in for ``pipe`` (a diffusers ``DiTPipeline``) running ``schedule`` (None: compute
    everything) as compiled code; ``compile_kwargs`` go to :func:`l2c_compile.compile` (``fuse``,
    ``backend``, ``cuda_graph``, ``dtype``, ``device``: those two apply to the compiled sampler's
    own copy of the weights; the pipeline and its components are never changed). L2CError for an
    unsupported pipeline or scheduler."""
    from diffusers import DiTPipeline

    if not isinstance(pipe, DiTPipeline):
        raise L2CError(f"compile_pipeline supports DiTPipeline, got {type(pipe).__name__}")
    for key in ("cfg", "model_info"):
        if key in compile_kwargs:
            raise L2CError(f"compile_pipeline sets {key} itself (from guidance_scale and the pipeline)")
    pipeline_plan(pipe.scheduler, 1)  # an unsupported scheduler fails here, not on the first call
    return CompiledPipeline(pipe, schedule, compile_kwargs)
