"""What the CLI, schedules and artifacts know about a diffusers model: a spec read from its config.

:class:`DiffusersSpec` answers the questions a registry :class:`~l2c_compile.models.spec.ModelSpec`
answers (name, sampler conventions, depth) for a diffusers folder, from ``config.json`` alone. Its
name is the registry name of the official architecture with the same shape when there is one
(``DiT-XL/2`` for ``facebook/DiT-XL-2-256``), so schedules and routers made for that architecture
apply; otherwise ``diffusers:<class>``. The manifest records ``family: "diffusers"``, the diffusers
class and its config; :func:`build_from_record` rebuilds the model from that record.

PixArt (``PixArtTransformer2DModel``): DPM-Solver++ 2M, linear β, integer timesteps, CFG 4.5 (the
pipeline's defaults), three sublayer kinds per block, text-conditioned (no classes); the record
adds the prompt length and image size the sampler is made for (``pixart``). Wan
(``WanTransformer3DModel``): video latents ``(C, F, H, W)`` from the frame count and the video size
(``Family.latent``); its record adds ``num_frames``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from l2c_compile.errors import L2CError
from l2c_compile.families import Family, family_for_diffusers
from l2c_compile.inputs import read_json


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
    text_len: int | None = None  # PixArt: the prompt length the sampler is made for
    height: int | None = None  # the image height in pixels, where the config does not give it (FLUX, Wan)
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
                     height: int | None = None, *, width: int | None = None,
                     num_frames: int | None = None) -> DiffusersSpec:
    """The spec of a ``cls`` model with ``config`` (private ``_`` keys dropped); ``text_len``:
    a text-conditioned model's prompt length (default 120); ``height`` / ``width`` (pixels) and
    ``num_frames``: the sample size, for a family whose config does not give it (``Family.latent``;
    default: its pipeline's, ``Family.default_size``)."""
    config = {k: v for k, v in sorted(config.items()) if not k.startswith("_")}
    fam = family_for_diffusers(cls)
    if fam is None or fam.sampling is None:
        raise L2CError(f"no model family declares the diffusers class {cls!r}")
    s = fam.sampling
    conventions = {"default_sampler": s.default_sampler, "noise_schedule": s.noise_schedule,
                   "time_input": s.time_input, "default_cfg_scale": s.default_cfg_scale}
    if fam.conditioning == "text":
        sized = fam.latent is not None
        return DiffusersSpec(f"diffusers:{cls}", cls, config, **conventions, text_len=text_len or 120,
                             height=height if sized else None, width=width if sized else None,
                             num_frames=num_frames if sized else None)
    return DiffusersSpec(_official_name(config) or f"diffusers:{cls}", cls, config, **conventions)


def spec_for_folder(path: str | os.PathLike[str]) -> DiffusersSpec:
    """The spec of the model in a pipeline or model folder, from its ``config.json`` (and for
    PixArt the pipeline's prompt length) only."""
    from l2c_compile.diffusers.load import default_text_len, model_folder

    folder, cls = model_folder(path)
    config = read_json(folder / "config.json", "diffusers config")
    fam = family_for_diffusers(cls)
    text = fam is not None and fam.conditioning == "text"
    return spec_from_config(cls, config, default_text_len(path) if text else None)


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
    import importlib

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
    module, _, name = fam.adapter.partition(":")
    adapter = getattr(importlib.import_module(module), name)  # the family's own, declared adapter
    model = adapter.from_record(transformer.eval(), record)
    model.model_name = record.get("name", "diffusers")
    return model.eval()

