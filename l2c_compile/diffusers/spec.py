"""What the CLI, schedules and artifacts know about a diffusers model: a spec read from its config.

:class:`DiffusersSpec` answers the questions a registry :class:`~l2c_compile.models.spec.ModelSpec`
answers (name, sampler conventions, depth) for a diffusers folder, from ``config.json`` alone. Its
name is the registry name of the official architecture with the same shape when there is one
(``DiT-XL/2`` for ``facebook/DiT-XL-2-256``), so schedules and routers made for that architecture
apply; otherwise ``diffusers:<class>``. The manifest records ``family: "diffusers"``, the diffusers
class and its config; :func:`build_from_record` rebuilds the model from that record.

PixArt (``PixArtTransformer2DModel``): DPM-Solver++ 2M, linear β, integer timesteps, CFG 4.5 (the
pipeline's defaults), three sublayer kinds per block, text-conditioned (no classes); the record
adds the prompt length and image size the sampler is made for (``pixart``).

SD3 (``SD3Transformer2DModel``): flow-matching Euler, timesteps σ·1000, CFG 7, text-conditioned;
its blocks differ (SD3.5's second attention in the ``dual_attention_layers`` only, no text MLP in
the last block), so the spec's :attr:`~DiffusersSpec.layout` is the family declaration applied to
the model its config builds on the meta device (no weights). The σ schedule is part of a
flow-matching model's convention (SD3 samples with ``shift`` 3): a pipeline folder's own
scheduler config makes the plan (:meth:`~DiffusersSpec.scheduler_plan`).

FLUX.1 (``FluxTransformer2DModel``): two block groups (the layout from the meta-device model, as
SD3), latents from the sample size (``Family.latent``: 1024 px by default, 128×128 latents), the
plan from the folder's scheduler over ``FluxPipeline``'s σ and μ; the name tells dev from schnell
(``…(guidance_embeds=True)``: ``Family.variant``), so a schedule for one is refused on the other.

Wan (``WanTransformer3DModel``): video latents ``(C, F, H, W)`` from the frame count and the video size
(``Family.latent``; a folder's spec takes them as options, default the pipeline's 81 frames of
832×480); its record adds ``num_frames``; its plan is the folder's flow UniPC (``flow_shift``) or
flow-matching Euler scheduler, with no μ (``WanPipeline`` passes none).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from l2c_compile.errors import L2CError
from l2c_compile.families import Family, family_for_diffusers
from l2c_compile.families.vocabulary import Layout
from l2c_compile.inputs import read_json
from l2c_compile.samplers.base import SamplerPlan


@dataclass(frozen=True)
class DiffusersSpec:
    """A diffusers model's conventions (DiT: DDIM, linear β, integer timesteps, CFG 4.0, latents;
    PixArt: DPM-Solver++, CFG 4.5, text-conditioned)."""

    name: str
    diffusers_class: str
    config: dict[str, Any]
    family: str = "diffusers"
    default_sampler: str = "ddim"
    noise_schedule: str = "linear"
    time_input: str = "discrete"
    default_cfg_scale: float = 4.0
    pixel_space: bool = False
    text_len: int | None = None  # text-to-image: the prompt length the sampler is made for
    scheduler_config: dict[str, Any] | None = None  # a flow-matching pipeline folder's scheduler config
    height: int | None = None  # the image height in pixels, where the config does not give it (FLUX)
    width: int | None = None  # the image width in pixels (Wan; a square family takes the height)
    num_frames: int | None = None  # a video family's frame count (Wan)

    @property
    def declaration(self) -> Family:
        """The family declared for this diffusers class (``families/builtin.py``)."""
        fam = family_for_diffusers(self.diffusers_class)
        if fam is None:
            raise L2CError(f"no model family declares the diffusers class {self.diffusers_class!r}")
        return fam

    @property
    def text_conditioned(self) -> bool:
        """Whether the model is conditioned on a prompt (PixArt) rather than a class."""
        return self.declaration.conditioning == "text"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The sublayer kinds of each block (vocabulary order), from the family's declaration."""
        return self.declaration.kinds

    @property
    def router_family(self) -> str:
        """The family whose routers and thresholds apply (a diffusers DiT takes DiT's)."""
        return self.declaration.own_router_family

    @property
    def depth(self) -> int:
        """Number of cacheable blocks."""
        return sum(int(self.config[k]) for k in self.declaration.depth_keys)

    @cached_property
    def meta_model(self) -> Any:
        """The model this config builds on the meta device (no weights allocated). L2CError for a
        config diffusers refuses."""
        import diffusers
        import torch

        try:
            with torch.device("meta"):
                return getattr(diffusers, self.diffusers_class).from_config(self.config)
        except (TypeError, ValueError) as exc:
            raise L2CError(f"bad {self.diffusers_class} config: {str(exc).splitlines()[0]}") from None

    @cached_property
    def layout(self) -> Layout:
        """Which kinds each block has: the family's declaration applied to :attr:`meta_model`."""
        return self.declaration.layout(self.meta_model)

    def check_size(self) -> None:
        """L2CError (one line) when the sample size (:attr:`size`) is one the family's adapter
        refuses (Wan: ``num_frames − 1`` not a multiple of 4, sides not multiples of 16), checked
        on :attr:`meta_model` before any weights load; nothing for a family whose config fixes it."""
        if self.size:
            self.declaration.adapter_class()(self.meta_model, text_len=self.text_len or 1, **self.size)

    def scheduler_plan(self, nfe: int) -> SamplerPlan | None:
        """The plan of the folder's own flow-matching scheduler for ``nfe`` steps at the model's
        default image size (its ``shift``, or the dynamic shift's μ for that size, as
        ``StableDiffusion3Pipeline`` computes it; FLUX: ``FluxPipeline``'s σ and μ,
        :func:`~l2c_compile.diffusers.flux.flux_plan`); None without one (a model folder, a VP model).
        L2CError for a scheduler or setting :func:`~l2c_compile.diffusers.pipeline_plan` refuses."""
        if self.scheduler_config is None:
            return None
        from l2c_compile.diffusers.flow_schedulers import is_flow_scheduler
        from l2c_compile.diffusers.scheduler_plans import SCHEDULER_PLANS, pipeline_plan
        from l2c_compile.diffusers.sd3 import shift_mu

        name = str(self.scheduler_config.get("_class_name"))
        scheduler_class = next((c for c in SCHEDULER_PLANS if c.__name__ == name), None)  # no other class is built
        if scheduler_class is None:
            raise L2CError(f"the pipeline folder's scheduler {name!r} has no compiled plan (supported: "
                           f"{', '.join(c.__name__ for c in SCHEDULER_PLANS)})")
        scheduler = scheduler_class.from_config(self.scheduler_config)
        if not is_flow_scheduler(scheduler):
            raise L2CError(f"{self.diffusers_class} samples with flow matching; the folder's {name} is not a "
                           "flow-matching scheduler")
        *_, height, width = self.latent_shape  # (C, H, W); a video's (C, F, H, W)
        if self.declaration.pipeline_plan is not None:  # the pipeline's own σ / μ (FLUX.1: flux_plan)
            return self.declaration.pipeline_plan_function()(scheduler, nfe, height, width)
        patch = self.config.get("patch_size", 1)
        mu = None  # WanPipeline hands its scheduler no μ (Wan's patch_size is a (t, h, w) triple)
        if isinstance(patch, int):  # SD3: a dynamic shift's μ from the default image's patch count
            mu = shift_mu(scheduler.config, patch, height, width)
        return pipeline_plan(scheduler, nfe, mu=mu)

    @property
    def num_classes(self) -> int:
        """Real classes (the null class is the row after them); 0 for a text-conditioned model."""
        return 0 if self.text_conditioned else int(self.config["num_embeds_ada_norm"])

    @property
    def size(self) -> dict[str, int]:
        """The sample size the sampler is made for, for a family whose config does not give it
        (``Family.latent``): the ``height``, ``width`` and ``num_frames`` given over the family's
        ``default_size``; ``{}`` for the others."""
        fam = self.declaration
        if fam.latent is None:
            return {}
        given = {"height": self.height, "width": self.width, "num_frames": self.num_frames}
        return {**fam.default_size, **{k: v for k, v in given.items() if v is not None}}

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """(C, H, W) the network denoises; (C, F, H, W) for a video model (Wan)."""
        latent = self.declaration.latent
        if latent is not None:
            return tuple(int(v) for v in latent(self.config, self.size))
        side = int(self.config["sample_size"])
        return int(self.config["in_channels"]), side, side

    def to_dict(self) -> dict[str, Any]:
        """The manifest's model record."""
        out = {"name": self.name, "family": self.family, "diffusers_class": self.diffusers_class,
               "config": dict(self.config), "latent_shape": list(self.latent_shape),
               "num_classes": self.num_classes, "noise_schedule": self.noise_schedule,
               "time_input": self.time_input, "default_sampler": self.default_sampler,
               "default_cfg_scale": self.default_cfg_scale, "pixel_space": self.pixel_space}
        if self.text_conditioned:
            *_, h, w = self.latent_shape
            frames = {"num_frames": self.size["num_frames"]} if "num_frames" in self.size else {}
            # the adapter's record, under the family's name ("pixart", "sd3", "wan"): what from_record reads
            out[self.declaration.name] = {"text_len": self.text_len or 120, **frames, "height": h * 8,
                                          "width": w * 8, "vae_scale_factor": 8}
        return out


def spec_from_config(cls: str, config: dict[str, Any], text_len: int | None = None,
                     scheduler_config: dict[str, Any] | None = None, *, height: int | None = None,
                     width: int | None = None, num_frames: int | None = None) -> DiffusersSpec:
    """The spec of a ``cls`` model with ``config`` (private ``_`` keys dropped); ``text_len``: a
    text-conditioned model's prompt length (default 120); ``scheduler_config``: a flow-matching
    pipeline's scheduler config, whose plan the CLI then runs (:meth:`DiffusersSpec.scheduler_plan`);
    ``height`` / ``width`` (pixels) and ``num_frames``: the sample size, for a family whose config
    does not give it (``Family.latent``; default: its pipeline's, ``Family.default_size``)."""
    config = {k: v for k, v in sorted(config.items()) if not k.startswith("_")}
    fam = family_for_diffusers(cls)
    if fam is None or fam.sampling is None:
        raise L2CError(f"no model family declares the diffusers class {cls!r}")
    s = fam.sampling
    conventions = {"default_sampler": s.default_sampler, "noise_schedule": s.noise_schedule,
                   "time_input": s.time_input, "default_cfg_scale": s.default_cfg_scale}
    if fam.conditioning == "text":
        sized = fam.latent is not None
        variant = fam.variant(config) if fam.variant is not None else ""  # FLUX: dev or schnell
        return DiffusersSpec(f"diffusers:{cls}{variant}", cls, config, **conventions, text_len=text_len or 120,
                             scheduler_config=scheduler_config, height=height if sized else None,
                             width=width if sized else None, num_frames=num_frames if sized else None)
    return DiffusersSpec(_official_name(config) or f"diffusers:{cls}", cls, config, **conventions)


def spec_for_folder(path: str | os.PathLike[str], *, height: int | None = None, width: int | None = None,
                    num_frames: int | None = None) -> DiffusersSpec:
    """The spec of the model in a pipeline or model folder, from its ``config.json`` (for a
    text-to-image model the prompt length its pipeline encodes to; for a flow-matching model the
    pipeline's scheduler config) only. ``height``, ``width`` (pixels) and ``num_frames``: the sample
    size, for a family whose config does not fix it (Wan; default: its pipeline's); L2CError when
    given for another family, or a size the family's adapter refuses (:meth:`DiffusersSpec.check_size`)."""
    from l2c_compile.diffusers.load import default_text_len, model_folder

    folder, cls = model_folder(path)
    config = read_json(folder / "config.json", "diffusers config")
    fam = family_for_diffusers(cls)
    text = fam is not None and fam.conditioning == "text"
    scheduler = Path(path) / "scheduler" / "scheduler_config.json"
    flow = fam is not None and fam.sampling is not None and fam.sampling.noise_schedule == "flow"
    scheduler_config = read_json(scheduler, "scheduler config") if flow and scheduler.is_file() else None
    if scheduler_config is not None and not isinstance(scheduler_config, dict):
        raise L2CError(f"{scheduler} is not a JSON object")
    given = {k: v for k, v in (("num_frames", num_frames), ("height", height), ("width", width)) if v is not None}
    if given and (fam is None or fam.latent is None):
        options = ", ".join(f"--{k.replace('_', '-')}" for k in given)
        raise L2CError(f"{options}: a {cls} takes its sample size from its config (these options are for FLUX.1 "
                       "and Wan folders)")
    # the size options the family's pipeline takes (an image family's width beside its height)
    takes = set(fam.default_size) | ({"width"} if "height" in fam.default_size else set()) if given else set()
    if set(given) - takes:
        options = ", ".join(f"--{k.replace('_', '-')}" for k in given if k not in takes)
        allowed = ", ".join(f"--{k.replace('_', '-')}" for k in ("num_frames", "height", "width") if k in takes)
        raise L2CError(f"{options}: a {cls} takes {allowed} only")
    spec = spec_from_config(cls, config, default_text_len(path) if text else None, scheduler_config, **given)
    spec.check_size()
    return spec



def _official_name(config: dict[str, Any]) -> str | None:
    """The registry name of the official DiT with this shape, if any."""
    from l2c_compile.models.registry import MODELS

    heads = config.get("num_attention_heads")
    want = {"input_size": config.get("sample_size"), "patch_size": config.get("patch_size"),
            "in_channels": config.get("in_channels"), "depth": config.get("num_layers"), "num_heads": heads,
            "hidden_size": (heads or 0) * (config.get("attention_head_dim") or 0),
            "num_classes": config.get("num_embeds_ada_norm"),
            "learn_sigma": config.get("out_channels") == 2 * (config.get("in_channels") or 0)}
    for name, spec in MODELS.items():
        if spec.family == "dit" and all(spec.kwargs.get(k) == v for k, v in want.items()):
            return name
    return None


def build_from_record(record: dict[str, Any]):
    """The adapter (:class:`~l2c_compile.diffusers.dit.DiffusersDiT`,
    :class:`~l2c_compile.diffusers.pixart.DiffusersPixArt`, …; random weights) from a manifest
    record: the one the family of its ``diffusers_class`` declares (``families/builtin.py``)."""
    import diffusers

    cls = record.get("diffusers_class")
    fam = family_for_diffusers(cls) if isinstance(cls, str) else None
    if fam is None or fam.adapter is None or not isinstance(record.get("config"), dict):
        raise L2CError(f"artifact manifest names an unsupported diffusers model {cls!r}")
    from l2c_compile.diffusers.load import check_config_size

    check_config_size(cls, record["config"], "artifact manifest's diffusers config")
    try:
        transformer = getattr(diffusers, cls).from_config(record["config"])
    except (TypeError, ValueError) as exc:
        raise L2CError(f"artifact manifest has a bad diffusers config: {exc}") from None
    model = fam.adapter_class().from_record(transformer.eval(), record)  # the family's own, declared adapter
    model.model_name = record.get("name", "diffusers")
    return model.eval()

