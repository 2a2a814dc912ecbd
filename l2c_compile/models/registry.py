"""The model registry: every supported architecture by name, and how to build, load and save it.

``MODELS`` maps a name (``"DiT-XL/2"``, ``"DiT-XL/2-512"``, ``"U-ViT-H/2"``, the tiny test models)
to a :class:`ModelSpec`: constructor arguments plus what a sampler needs to know about the model
(latent shape, noise schedule, timestep convention, default sampler and guidance scale). The CLI's
choices come from here. Loading is safe by default: safetensors, or ``torch.load`` with
``weights_only=True``; anything that does not fit the architecture exactly is an :class:`L2CError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from l2c_compile.errors import L2CError, suggest
from l2c_compile.io import atomic_path
from l2c_compile.models.dit import DiT
from l2c_compile.models.uvit import UViT

FAMILIES: dict[str, type[nn.Module]] = {"dit": DiT, "uvit": UViT}


@dataclass(frozen=True)
class ModelSpec:
    """One registered architecture: constructor kwargs and its sampling conventions."""

    name: str
    family: str  # "dit" | "uvit"
    kwargs: Mapping[str, Any]  # constructor arguments of the family's class
    latent_shape: tuple[int, int, int]  # (C, H, W) the network denoises
    num_classes: int  # real classes, excluding the null class
    noise_schedule: str  # "linear" (DiT) | "scaled_linear" (U-ViT)
    time_input: str  # "discrete" (DiT: integer timesteps) | "continuous" (U-ViT: t * 1000)
    default_sampler: str  # "ddim" | "dpm-solver-2"
    default_cfg_scale: float  # in the family's own convention (DiT 4.0, U-ViT 0.4)
    pixel_space: bool  # True: outputs are images (no VAE); False: VAE latents
    description: str

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise L2CError(f"model {self.name!r}: unknown family {self.family!r} (expected dit or uvit)")
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "latent_shape", tuple(self.latent_shape))

    def __hash__(self) -> int:
        return hash((self.name, self.family, tuple(sorted(self.kwargs.items()))))

    @property
    def hidden(self) -> int:
        """Width of the residual stream."""
        return int(self.kwargs["hidden_size" if self.family == "dit" else "embed_dim"])

    @property
    def heads(self) -> int:
        """Attention heads per block."""
        return int(self.kwargs["num_heads"])

    @property
    def patch(self) -> int:
        """Patch side in latent pixels."""
        return int(self.kwargs["patch_size"])

    @property
    def tokens(self) -> int:
        """Sequence length the blocks see (U-ViT adds a label and a time token)."""
        side = self.latent_shape[1] // self.patch
        extras = 0 if self.family == "dit" else (2 if self.kwargs["num_classes"] > 0 else 1)
        return side * side + extras

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (for manifests and ``--format json``)."""
        return {
            "name": self.name,
            "family": self.family,
            "kwargs": dict(self.kwargs),
            "latent_shape": list(self.latent_shape),
            "num_classes": self.num_classes,
            "noise_schedule": self.noise_schedule,
            "time_input": self.time_input,
            "default_sampler": self.default_sampler,
            "default_cfg_scale": self.default_cfg_scale,
            "pixel_space": self.pixel_space,
            "description": self.description,
        }


#################################################################################
#                                  The registry                                 #
#################################################################################

_DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
_DIT_OFFICIAL = {("XL", 2, 256): "DiT-XL-2-256x256.pt", ("XL", 2, 512): "DiT-XL-2-512x512.pt"}

# (constructor depth, width, heads, conv output layer) of the U-ViT paper's ImageNet-256 models;
# only L and H have upstream configs (L keeps the default 3×3 conv head, H has none).
_UVIT_SIZES = {"S": (12, 512, 8, True), "M": (16, 768, 12, True), "L": (20, 1024, 16, True),
               "H": (28, 1152, 16, False)}


def _dit_spec(name: str, *, input_size: int, patch: int, hidden: int, depth: int, heads: int,
              num_classes: int, description: str) -> ModelSpec:
    kwargs = dict(input_size=input_size, patch_size=patch, in_channels=4, hidden_size=hidden,
                  depth=depth, num_heads=heads, mlp_ratio=4.0, class_dropout_prob=0.1,
                  num_classes=num_classes, learn_sigma=True)
    return ModelSpec(name, "dit", kwargs, (4, input_size, input_size), num_classes, "linear",
                     "discrete", "ddim", 4.0, False, description)


def _uvit_spec(name: str, *, img_size: int, hidden: int, depth: int, heads: int, conv: bool,
               num_classes: int, description: str, pixel_space: bool = False) -> ModelSpec:
    kwargs = dict(img_size=img_size, patch_size=2, in_chans=4, embed_dim=hidden, depth=depth,
                  num_heads=heads, mlp_ratio=4.0, qkv_bias=False, mlp_time_embed=False,
                  num_classes=num_classes + 1, conv=conv, skip=True)
    return ModelSpec(name, "uvit", kwargs, (4, img_size, img_size), num_classes, "scaled_linear",
                     "continuous", "dpm-solver-2", 0.4, pixel_space, description)


def _build_registry() -> dict[str, ModelSpec]:
    specs: list[ModelSpec] = []
    for res, latent, suffix in ((256, 32, ""), (512, 64, "-512")):
        for size, (depth, hidden, heads) in _DIT_SIZES.items():
            for patch in (2, 4, 8):
                name = f"DiT-{size}/{patch}{suffix}"
                weights = _DIT_OFFICIAL.get((size, patch, res))
                origin = f"official weights {weights}" if weights else "no official weights"
                specs.append(_dit_spec(
                    name, input_size=latent, patch=patch, hidden=hidden, depth=depth, heads=heads,
                    num_classes=1000,
                    description=f"DiT-{size}/{patch}, ImageNet {res}px (latent 4x{latent}x{latent}); {origin}"))
    for size, (depth, hidden, heads, conv) in _UVIT_SIZES.items():
        weights = "official weights imagenet256_uvit_huge.pth" if size == "H" else "no official weights"
        specs.append(_uvit_spec(
            f"U-ViT-{size}/2", img_size=32, hidden=hidden, depth=depth, heads=heads, conv=conv,
            num_classes=1000,
            description=f"U-ViT-{size}/2, ImageNet 256px (latent 4x32x32), {depth + 1} blocks; {weights}"))
    # Tiny models for tests and demos: no VAE exists for them, so their outputs count as images.
    specs.append(ModelSpec(
        "DiT-Tiny", "dit",
        dict(input_size=16, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4,
             mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=10, learn_sigma=True),
        (4, 16, 16), 10, "linear", "discrete", "ddim", 4.0, True,
        "tiny DiT for tests (3 blocks, width 64, 10 classes); random weights"))
    specs.append(_uvit_spec(
        "U-ViT-Tiny", img_size=16, hidden=64, depth=4, heads=4, conv=False, num_classes=10,
        pixel_space=True, description="tiny U-ViT for tests (5 blocks, width 64, 10 classes); random weights"))
    return {s.name: s for s in specs}


MODELS: dict[str, ModelSpec] = _build_registry()


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name`` (case-insensitive); L2CError with a suggestion otherwise."""
    if name in MODELS:
        return MODELS[name]
    folded = {k.lower(): v for k, v in MODELS.items()}
    if name.lower() in folded:
        return folded[name.lower()]
    raise L2CError(f"unknown model {name!r}{suggest(name, list(MODELS))}; see `l2c-compile models`")


def _resolve(name_or_spec: str | ModelSpec) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)


def build_model(name_or_spec: str | ModelSpec, *, device: str | torch.device = "cpu") -> nn.Module:
    """Instantiate a model in eval mode with the official init; ``device="meta"`` allocates nothing."""
    spec = _resolve(name_or_spec)
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise L2CError(f"invalid device {device!r}: {exc}") from None
    with dev:
        model = FAMILIES[spec.family](**spec.kwargs)
    model.model_name = spec.name
    return model.eval()


def num_blocks(spec: str | ModelSpec) -> int:
    """Number of cacheable blocks (DiT: depth; U-ViT: depth // 2 * 2 + 1)."""
    spec = _resolve(spec)
    depth = int(spec.kwargs["depth"])
    return depth if spec.family == "dit" else depth // 2 * 2 + 1


def depth_units(spec: str | ModelSpec) -> int:
    """How many identical repeating units the model has (DiT: blocks; U-ViT: in/out block pairs)."""
    spec = _resolve(spec)
    depth = int(spec.kwargs["depth"])
    return depth if spec.family == "dit" else depth // 2


def with_depth_units(spec: ModelSpec, units: int) -> ModelSpec:
    """The same architecture with ``units`` repeating units (for counting by extrapolation)."""
    depth = units if spec.family == "dit" else 2 * units
    return dataclasses.replace(spec, name=f"{spec.name}@{units}", kwargs={**spec.kwargs, "depth": depth})


def extrapolate_depth(spec: ModelSpec, measure: Callable[[ModelSpec], int]) -> int:
    """``measure`` of the full model, from the same model with 1 and 2 units (cost is affine in depth)."""
    one, two = measure(with_depth_units(spec, 1)), measure(with_depth_units(spec, 2))
    return one + (depth_units(spec) - 1) * (two - one)


def _meta_params(spec: ModelSpec) -> int:
    return sum(p.numel() for p in build_model(spec, device="meta").parameters())


@functools.lru_cache(maxsize=None)
def _count_params(spec: ModelSpec) -> int:
    return extrapolate_depth(spec, _meta_params)


def count_params(spec: str | ModelSpec) -> int:
    """Parameter count, from meta-device builds (nothing is allocated)."""
    return _count_params(_resolve(spec))


def model_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per registered model (or per name in ``names``): sizes, params, MACs per image."""
    from l2c_compile.metrics.macs import forward_macs  # metrics builds on this module

    rows = []
    for spec in (get_spec(n) for n in (names if names is not None else MODELS)):
        c, h, w = spec.latent_shape
        rows.append({
            "name": spec.name,
            "family": spec.family,
            "depth": num_blocks(spec),
            "hidden": spec.hidden,
            "heads": spec.heads,
            "patch": spec.patch,
            "tokens": spec.tokens,
            "params": count_params(spec),
            "macs_per_forward": forward_macs(spec),
            "latent": f"{c}x{h}x{w}",
            "description": spec.description,
        })
    return rows


#################################################################################
#                         Random weights for tests and demos                    #
#################################################################################


def init_random(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, non-degenerate random weights: every sublayer matters, activations stay O(1).

    Unlike the official init (adaLN-Zero, zero output layer), no gate or projection is zero, so
    caching any sublayer changes the output. Linears are N(0, 1/fan_in) so widths keep their
    scale; DiT's adaLN projections are scaled down (gates ~0.1) and U-ViT's residual-branch outputs
    too (it has no gates), so nothing grows through 28 blocks. DiT's fixed sin-cos table is kept.
    """
    if any(p.is_meta for p in model.parameters()):
        raise L2CError("init_random needs a materialised model, not one on the meta device")
    gen = torch.Generator().manual_seed(seed)
    blocks = model.transformer_blocks()
    branch_scale = 1.0 if isinstance(model, DiT) else 1.0 / math.sqrt(len(blocks))

    def fill(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(torch.randn(t.shape, generator=gen) * std + mean)  # drawn on CPU: device-independent

    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                std = m.in_features**-0.5
                if "adaLN_modulation" in name:
                    std *= 0.3
                elif name.endswith(("attn.proj", "mlp.fc2")):
                    std *= branch_scale
                fill(m.weight, std)
                if m.bias is not None:
                    fill(m.bias, 0.02)
            elif isinstance(m, nn.Conv2d):
                fill(m.weight, (m.weight[0].numel()) ** -0.5)
                if m.bias is not None:
                    fill(m.bias, 0.02)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                fill(m.weight, 0.1, mean=1.0)
                fill(m.bias, 0.02)
            elif isinstance(m, nn.Embedding):
                fill(m.weight, 0.5)
        pos = getattr(model, "pos_embed", None)
        if isinstance(pos, nn.Parameter) and pos.requires_grad:  # learned (U-ViT), not DiT's fixed table
            fill(pos, 0.1)
    return model


#################################################################################
#                               Checkpoints                                     #
#################################################################################


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _names(keys: list[str], limit: int = 3) -> str:
    if not keys:
        return ""
    shown = ", ".join(keys[:limit])
    return f" ({shown}{', …' if len(keys) > limit else ''})"


def _looks_like_safetensors(head: bytes) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    return len(head) >= 9 and head[8:9] == b"{"


def _read(path: Path) -> object:
    with path.open("rb") as f:
        head = f.read(16)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for bad bytes
            raise L2CError(f"checkpoint {path} is not a readable safetensors file: {_first_line(exc)}") from None
    # Official DiT training checkpoints carry their argparse args: allow exactly that class.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, unsafe globals, …
        raise L2CError(f"checkpoint {path} is corrupt or not a torch/safetensors file: {_first_line(exc)}") from None


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict"):  # EMA weights are the ones sampled from
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise L2CError(f"checkpoint {path} holds no state dict (expected tensors, or a dict with 'ema' or 'model')")
    bad = [str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise L2CError(f"checkpoint {path} holds {len(bad)} non-tensor entries{_names(bad)}; expected a state dict")
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load weights strictly from a state dict, a dict holding ``ema``/``model``, or safetensors.

    A model on the meta device is materialised on the CPU (no double allocation).
    """
    path = Path(path)
    if not path.exists():
        raise L2CError(f"checkpoint {path} not found")
    if not path.is_file():
        raise L2CError(f"checkpoint {path} is not a file")
    sd = _state_dict_of(_read(path), path)
    expected = model.state_dict()
    name = getattr(model, "model_name", type(model).__name__)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshaped:
        msg = (f"checkpoint {path} does not fit {name}: {len(missing)} missing keys{_names(missing)}, "
               f"{len(unexpected)} unexpected{_names(unexpected)}")
        if misshaped:
            k = misshaped[0]
            msg += (f", {len(misshaped)} with the wrong shape ({k}: {list(sd[k].shape)} in the checkpoint, "
                    f"{list(expected[k].shape)} in the model{', …' if len(misshaped) > 1 else ''})")
        raise L2CError(msg)
    bad = [k for k, v in sd.items() if not (v.is_floating_point() == expected[k].is_floating_point())]
    if bad:
        raise L2CError(f"checkpoint {path} has tensors of the wrong kind{_names(bad)} for {name}")
    assign = any(t.is_meta for t in expected.values())
    if assign:
        sd = {k: v.to(expected[k].dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=assign)


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Save the state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    sd = model.state_dict()
    if any(t.is_meta for t in sd.values()):
        raise L2CError("cannot save a model on the meta device: it holds no weights")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    name = getattr(model, "model_name", type(model).__name__)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "model": name})
