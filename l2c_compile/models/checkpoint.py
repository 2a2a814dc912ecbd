"""Checkpoints: strict, safe loading (safetensors or ``torch.load(weights_only=True)``) and saving.

A checkpoint is a plain state dict, a dict holding one under ``ema`` or ``model`` (DiT training
checkpoints), or a ``.safetensors`` file. Anything that does not fit the model exactly (a missing
or corrupt file, missing, unexpected or mis-shaped keys) is an :class:`L2CError` in one line.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.inputs import input_file
from l2c_compile.io import atomic_path


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
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise L2CError(f"checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types for bad bytes
            from l2c_compile.filekind import describe_bytes

            kind = describe_bytes(head)
            what = (
                "a corrupt or truncated safetensors file"
                if kind == "a safetensors file"
                else f"{kind}, not safetensors"
            )
            raise L2CError(
                f"checkpoint {path} cannot be loaded: it is {what} ({_first_line(exc, 80)})"
            ) from None
    # Official DiT training checkpoints carry their argparse args: allow exactly that class.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, truncated pickle, unsafe globals, …
        from l2c_compile.filekind import torch_load_problem

        raise L2CError(
            f"checkpoint {path} cannot be loaded: {torch_load_problem(exc, head)} (expected a "
            "torch .pt/.pth checkpoint or a .safetensors file)"
        ) from None


def _state_dict_of(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict"):  # EMA weights are the ones sampled from
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise L2CError(
            f"checkpoint {path} holds no state dict (expected tensors, or a dict with 'ema' or 'model')"
        )
    bad = [
        str(k) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))
    ]
    if bad:
        raise L2CError(
            f"checkpoint {path} holds {len(bad)} non-tensor entries{_names(bad)}; expected a state dict"
        )
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DDP / torch.compile wrappers
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def load_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load weights strictly from a state dict, a dict holding ``ema``/``model``, or safetensors.

    A model on the meta device is materialised on the CPU (no double allocation).
    """
    path = input_file(path, "checkpoint")
    sd = _state_dict_of(_read(path), path)
    expected = model.state_dict()
    name = getattr(model, "model_name", type(model).__name__)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or misshaped:
        msg = (
            f"checkpoint {path} does not fit {name}: {len(missing)} missing keys{_names(missing)}, "
            f"{len(unexpected)} unexpected{_names(unexpected)}"
        )
        if misshaped:
            k = misshaped[0]
            msg += (
                f", {len(misshaped)} with the wrong shape ({k}: {list(sd[k].shape)} in the checkpoint, "
                f"{list(expected[k].shape)} in the model{', …' if len(misshaped) > 1 else ''})"
            )
        raise L2CError(msg)
    bad = [k for k, v in sd.items() if v.is_floating_point() != expected[k].is_floating_point()]
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
