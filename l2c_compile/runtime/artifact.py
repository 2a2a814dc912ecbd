"""Loading an artifact folder: every file checked, the code regenerated, nothing foreign run.

An artifact is shared like a model file, and whoever wrote the folder also wrote the manifest
that vouches for it, so a hash in ``manifest.json`` proves nothing about ``sampler.py``. ``load``
therefore treats the folder as *data* and rebuilds the code itself:

1. ``manifest.json``: format, version, dtype and flags, parsed once into a typed
   :class:`~l2c_compile.runtime.manifest.Manifest`; every file it lists is present, a regular file in the
   folder itself (no link out of it, no fifo or device), and matches its sha256;
   the model record of a registered model (``DiT-XL/2``) is the registry's (checkpoint path aside).
2. ``weights.safetensors``: read without unpickling; its tensors' dtype must be the manifest's
   ``dtype`` (those the model keeps in float32, ``families.fp32_kept``: float32 or wider) and its
   keys and shapes must fit the model the manifest's config builds (strict).
3. The sampler plan is rebuilt from the manifest's sampler name, NFE and options and must list
   exactly the manifest's calls (timesteps, roles); the schedule is parsed and validated.
4. This l2c-compile compiles (model, plan, schedule, cfg, fuse, hoist, dtype) again; the regenerated
   ``sampler.py`` must equal the folder's byte for byte, and the regenerated manifest must equal
   the folder's in every field but the versions and the weights hash (checked in 1).

Only then is the regenerated source executed — the folder's copy is never run; it stays in the
folder for people to read and diff. Any failed check is one line (:class:`L2CError`).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile.compiler.driver import compile as compile_sampler
from l2c_compile.errors import L2CError
from l2c_compile.families import fp32_kept, kept_dtype, model_dtype
from l2c_compile.inputs import input_file, read_json
from l2c_compile.limits import check_model_size
from l2c_compile.runtime import features
from l2c_compile.runtime.backends import restore_regions
from l2c_compile.runtime.cuda_graph import check_cuda_graph_device
from l2c_compile.runtime.manifest import (
    BACKENDS,
    FILES,
    Manifest,
    artifact_manifest,
    parse_manifest,
    sha256_file,
)
from l2c_compile.runtime.sampler import CompiledSampler
from l2c_compile.samplers import make_plan, sampler_options
from l2c_compile.samplers.base import SamplerPlan

# versions and this machine's slower paths: recorded, but another version or machine may load it
NOT_COMPARED = ("l2c_compile", "torch", "fallbacks")


def artifact_file(root: Path, name: str) -> Path:
    """``root / name`` when it is a regular file in the folder itself: no link (a link could
    point at another model's weights, and the hash in the manifest would vouch for them), no
    fifo or device; L2CError otherwise."""
    return input_file(root / name, f"artifact file {name}", links=False)


def read_manifest(directory: str | os.PathLike[str]) -> Manifest:
    """Read an artifact's manifest, check it and every file hash, and type it; L2CError on a mismatch."""
    root = Path(directory)
    if not root.is_dir():
        if root.exists():
            raise L2CError(f"{root} is a file, not an artifact folder (give the folder `compile -o` wrote)")
        raise L2CError(f"artifact folder {root} does not exist")
    if not (root / "manifest.json").exists() and not (root / "manifest.json").is_symlink():
        raise L2CError(f"{root} is not an l2c-compile artifact: manifest.json is missing")
    path = artifact_file(root, "manifest.json")
    manifest = parse_manifest(read_json(path, "artifact manifest", links=False), path)
    for name in FILES:
        if not (root / name).exists() and not (root / name).is_symlink():
            raise L2CError(f"artifact {root} is missing {name}")
        if sha256_file(artifact_file(root, name)) != manifest.files[name]:
            raise L2CError(
                f"artifact {root}: {name} does not match its sha256 in manifest.json (modified or corrupt)"
            )
    return manifest


def check_model_record(root: Path, info: Any) -> None:
    """A registered model's record must be the registry's own (its checkpoint path aside)."""
    from l2c_compile.models.registry import MODELS

    name = info.get("name") if isinstance(info, dict) else None
    if name not in MODELS or info.get("family") == "diffusers":
        return  # a model compiled with its own record: its code is still regenerated from it
    want = MODELS[name].to_dict()
    for key in sorted(set(want) | set(info)):
        if key != "checkpoint" and json.dumps(info.get(key), default=str) != json.dumps(want.get(key), default=str):
            raise L2CError(
                f"artifact {root}: manifest.json's model record for {name} differs from the registry's "
                f"(field {key!r}); recompile it"
            )


def build_from_info(info: Any) -> nn.Module:
    """An empty model (parameters on the meta device) from a manifest's ``model`` record."""
    from l2c_compile.models.registry import FAMILIES

    family = info.get("family") if isinstance(info, dict) else None
    if family == "diffusers":  # a diffusers model: rebuilt from its class and config
        from l2c_compile.diffusers.spec import build_from_record

        return build_from_record(info)
    kwargs = info.get("kwargs") if isinstance(info, dict) else None
    build = None
    if family in FAMILIES and isinstance(kwargs, dict):
        check_family_size(family, kwargs, "artifact manifest's model")
        build = lambda kw: FAMILIES[family](**kw)  # noqa: E731
    elif isinstance(family, str) and isinstance(kwargs, dict):  # a declared family that says how to build
        from l2c_compile.families import FAMILIES as DECLARED

        build = getattr(DECLARED.get(family), "build", None)
    if build is None:
        raise L2CError(f"artifact manifest names no buildable model (family {family!r})")
    try:
        with torch.device("meta"):  # no memory, no random init: the weights come from the file
            model = build(dict(kwargs))
    except (TypeError, ValueError) as exc:
        raise L2CError(f"artifact manifest has a bad model config: {exc}") from None
    model.model_name = info.get("name", family)
    return model.eval()


def check_family_size(family: str, kwargs: dict[str, Any], what: str) -> None:
    """L2CError unless ``kwargs`` of one of our families (dit, uvit) build a model of sane size
    (:func:`~l2c_compile.limits.check_model_size`), checked before building it even on meta."""
    from l2c_compile.models.spec import family_shape

    shape = family_shape(family)
    width, side, patch = kwargs.get(shape.width), kwargs.get(shape.side), kwargs.get("patch_size")
    tokens = (side // patch) ** 2 if all(isinstance(v, int) and v > 0 for v in (side, patch)) else 0
    check_model_size(kwargs, what, depth=kwargs.get("depth"), width=width, tokens=tokens,
                     classes=kwargs.get("num_classes", 0), mlp_ratio=kwargs.get("mlp_ratio", 4.0))


def plan_from_manifest(record: Any) -> SamplerPlan:
    """The sampler plan a manifest's ``sampler`` record describes; L2CError unless it is exact."""
    if not isinstance(record, dict):
        raise L2CError("artifact manifest has no sampler record")
    try:
        name = str(record["sampler"])
        accepted = sampler_options(name)  # the rest of ``options`` describes fixed choices
        options = {k: v for k, v in dict(record.get("options") or {}).items() if k in accepted}
        plan = make_plan(name, record["nfe"], noise_schedule=record["noise_schedule"],
                         time_input=record["time_input"], **options)
    except KeyError as exc:
        raise L2CError(f"artifact manifest's sampler record lacks {exc}") from None
    if json.loads(json.dumps(plan.describe())) != record:
        raise L2CError("artifact manifest's sampler calls are not what its sampler and options give")
    return plan


def _load_weights(root: Path, model: nn.Module, dtype_name: str) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(artifact_file(root, "weights.safetensors")))
    except (SafetensorError, OSError) as exc:
        raise L2CError(f"artifact {root}: cannot read weights.safetensors ({exc})") from None
    kept = set(fp32_kept(model).values())  # their dtype follows the manifest's, never below float32
    held = sorted({str(v.dtype).removeprefix("torch.") for k, v in state.items() if v.is_floating_point()
                   and k not in kept})
    if held != [dtype_name]:
        raise L2CError(
            f"artifact {root}: manifest.json says dtype {dtype_name} but weights.safetensors holds "
            f"{', '.join(held) or 'no floating-point'} tensors"
        )
    wide = kept_dtype(getattr(torch, dtype_name), torch.float32)
    narrow = sorted(k for k in kept & set(state) if state[k].is_floating_point() and state[k].dtype != wide)
    if narrow:
        raise L2CError(f"artifact {root}: weights.safetensors holds {narrow[0]} in {state[narrow[0]].dtype}, but the "
                       f"model keeps it in {wide} with {dtype_name} weights")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[1:2] or [str(exc)]
        raise L2CError(
            f"artifact {root}: weights do not fit {getattr(model, 'model_name', 'the model')} "
            f"({first[0].strip()})"
        ) from None
    return model


def _first_difference(got: dict[str, Any], want: dict[str, Any]) -> str | None:
    for key in sorted(set(got) | set(want)):
        if key in NOT_COMPARED:
            continue
        if key == "files":
            if got.get(key, {}).get("sampler.py") != want.get(key, {}).get("sampler.py"):
                return "files"
        elif json.dumps(got.get(key), default=str) != json.dumps(want.get(key), default=str):
            return key
    return None


def load(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    backend: str | None = None,
    cuda_graph: bool | None = None,
) -> CompiledSampler:
    """Load an artifact folder as a :class:`CompiledSampler`, running only code regenerated here.

    The checks (module docstring) cover every file and every manifest field ``load`` acts on;
    each failure is one :class:`L2CError` line. ``device``: where the weights go (default CPU).
    ``backend``: ``"eager"``, ``"inductor"`` or ``"regional"``; None (default) keeps the backend the artifact was
    compiled for. ``cuda_graph``: None keeps the manifest's choice.
    """
    if backend is not None and backend not in BACKENDS:
        raise L2CError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    root = Path(directory)
    manifest = read_manifest(root)
    check_model_record(root, manifest.model)
    model = _load_weights(root, build_from_info(manifest.model), manifest.dtype)
    if device is not None:
        model = model.to(device)
    plan = plan_from_manifest(manifest.sampler)
    compiled = compile_sampler(model, plan, manifest.schedule, backend=manifest.backend, cfg=manifest.cfg,
                               fuse=manifest.fuse, model_info=manifest.model, hoist=manifest.hoist,
                               hoist_limit_bytes=manifest.hoist_limit_bytes)
    compiled.record = replace(compiled.record, cuda_graph=manifest.cuda_graph)
    source = artifact_file(root, "sampler.py").read_text(encoding="utf-8")
    if source != compiled.source:
        raise L2CError(
            f"artifact {root}: sampler.py differs from the code this l2c-compile generates from the "
            "manifest (edited, or written by another version); refusing to load it — recompile"
        )
    files = {**manifest.files, "sampler.py": sha256_file(root / "sampler.py")}
    expected = artifact_manifest(compiled.record, files)
    field = _first_difference(manifest.document, expected.document)
    if field is not None:
        raise L2CError(
            f"artifact {root}: manifest.json field {field!r} is not what this l2c-compile derives "
            "from the artifact's data (edited, or written by another version) — recompile"
        )
    if backend is not None and backend != manifest.backend:  # a caller's override, after the checks
        if manifest.backend == "regional":
            restore_regions(compiled.model)
        weights = next(compiled.model.parameters())
        notes = features.fallback_notes(model_dtype(compiled.model), weights.device, backend)  # the backend's own slower paths
        record = replace(compiled.record, backend=backend, fallbacks=tuple(notes))
        compiled = CompiledSampler(compiled.model, compiled.source, record, backend=backend)
    graphed = manifest.cuda_graph if cuda_graph is None else cuda_graph
    if graphed:
        check_cuda_graph_device(next(model.parameters()).device)
    compiled.cuda_graph = graphed
    return compiled
