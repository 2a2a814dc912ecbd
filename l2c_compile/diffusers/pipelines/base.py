"""The drop-in's common part and diffusers' ``DiTPipeline``: :class:`CompiledPipeline`.

The returned :class:`CompiledPipeline` takes the pipeline's own arguments and returns its own
output type. Noise is drawn exactly as the pipeline draws it (same generator, shape, device and
dtype); the loop is a :class:`~l2c_compile.runtime.sampler.CompiledSampler` over a
:class:`~l2c_compile.samplers.base.SamplerPlan` made from the pipeline's scheduler (its timestep
spacing and its update, including how it steps past t = 0); CFG is the pipeline's
(``u + s · (c − u)`` on the ε channels, only when ``guidance_scale > 1``); the latents are decoded
with the pipeline's own VAE. Sources: diffusers ``DiTPipeline.__call__``, ``DDIMScheduler.step``.

Which scheduler family a drop-in runs is a class attribute (``flow_matching``): ε pipelines refuse
a flow-matching scheduler, flow-matching pipelines require one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.diffusers.dit import DiffusersDiT
from l2c_compile.diffusers.scheduler_plans import pipeline_plan
from l2c_compile.diffusers.spec import spec_from_config
from l2c_compile.errors import L2CError
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers.base import SamplerPlan
from l2c_compile.schedule import Schedule

__all__ = ["CompiledPipeline", "pipeline_errors"]




class CompiledPipeline:
    """``pipe(...)`` with the denoising loop compiled for one schedule (see the module docstring).

    Compiled samplers are made on first use per (``num_inference_steps``, CFG on/off) and kept.
    """

    # Whether the pipeline samples with a flow-matching (velocity) scheduler; False: a VP scheduler
    # with ε prediction. compile_pipeline refuses a pipeline whose scheduler is of the other sort.
    flow_matching: ClassVar[bool] = False

    def __init__(self, pipe: Any, schedule: Schedule | None, compile_kwargs: dict[str, Any]) -> None:
        """Every drop-in holds the pipeline (never changed), the schedule, ``compile``'s keyword
        arguments and the compiled samplers made so far, by the settings each was made for."""
        self.pipe = pipe
        self.schedule = schedule
        self.compile_kwargs = compile_kwargs
        self.samplers: dict[tuple[Any, ...], CompiledSampler] = {}

    @functools.cached_property
    def model(self) -> DiffusersDiT:
        """The ``DiTPipeline``'s transformer as the compiler sees it."""
        return DiffusersDiT(self.pipe.transformer)

    def check_scheduler(self) -> None:
        """L2CError now, not on the first call, when the pipeline's scheduler or one of its
        settings has no compiled plan."""
        pipeline_plan(self.pipe.scheduler, 1)

    def _plan(self, num_inference_steps: int, **plan_kwargs: Any) -> tuple[SamplerPlan, Schedule | None]:
        """The pipeline scheduler's plan for these steps (``plan_kwargs``: ``mu``, ``sigmas`` for
        :func:`pipeline_plan`) and the schedule, checked by :meth:`_check_schedule`."""
        plan = pipeline_plan(self.pipe.scheduler, num_inference_steps, **plan_kwargs)
        return plan, self._check_schedule(plan, num_inference_steps)

    def _check_schedule(self, plan: SamplerPlan, num_inference_steps: int) -> Schedule | None:
        """The schedule, L2CError when it was made for another NFE or sampler than ``plan``, or
        from a folder of another diffusers model (its name, ``diffusers:…``, is not this
        pipeline's :attr:`spec_name`: FLUX.1-schnell's on dev, a FLUX one on SD3). A name chosen in
        code is not compared; the rest of :meth:`~l2c_compile.schedule.Schedule.check_fits` runs
        when the sampler is compiled."""
        sched = self.schedule
        if sched is not None and (sched.nfe != plan.nfe or sched.sampler != plan.sampler):
            raise L2CError(f"the schedule is for {sched.sampler} with {sched.nfe} NFE, the pipeline runs "
                           f"{plan.sampler} with num_inference_steps={num_inference_steps}")
        self.check_schedule_model()
        return sched

    def check_schedule_model(self) -> None:
        """L2CError when the schedule was made from a folder of another diffusers model (its name,
        ``diffusers:…``, is not this pipeline's :attr:`spec_name`); a name chosen in code is not
        compared. ``compile_pipeline`` calls it, so a wrong schedule fails there, not on the first call."""
        sched = self.schedule
        if sched is not None and sched.model.startswith("diffusers:") and sched.model != self.spec_name:
            raise L2CError(f"the schedule was made for {sched.model}, this pipeline's transformer is "
                           f"{self.spec_name}")

    @property
    def spec_name(self) -> str:
        """The name a schedule made from this pipeline's folder carries
        (:class:`~l2c_compile.diffusers.spec.DiffusersSpec`)."""
        transformer = self.pipe.transformer
        return spec_from_config(type(transformer).__name__, dict(transformer.config)).name

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


@contextlib.contextmanager
def pipeline_errors(kinds: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """The errors of ``kinds`` a pipeline raises for bad input, as one L2CError
    line (its first sentence before diffusers' "Please …" advice)."""
    try:
        yield
    except kinds as exc:
        raise L2CError(str(exc).splitlines()[0].split(" Please")[0].strip()) from None
