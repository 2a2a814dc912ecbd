"""Running and shipping compiled samplers: CompiledSampler, ``save`` and ``load``.

An artifact is a folder::

    manifest.json        format/version, versions, model config, sampler, NFE, dtype, schedule,
                         pass reports, and the sha256 of every other file
    sampler.py           the generated code (step graphs + unrolled loop), readable
    weights.safetensors  the model's state dict

``load`` verifies every hash before reading anything, refuses another format version, and never
unpickles: weights come from safetensors, code from the verified generated source.
"""

from __future__ import annotations

import hashlib
import json
import linecache
import os
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile import __version__
from l2c_compile.errors import L2CError

ARTIFACT_FORMAT = "l2c-artifact"
ARTIFACT_VERSION = 1
FILES = ("sampler.py", "weights.safetensors")


def _exec_source(source: str, filename: str) -> dict[str, Any]:
    """Execute generated source as a module; register it with linecache for tracebacks/dynamo."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": "l2c_compiled", "__file__": filename}
    exec(compile(source, filename, "exec"), namespace)  # our own generated, hash-verified code
    return namespace


class CompiledSampler(nn.Module):
    """A specialized sampler for one (model, sampler, NFE, schedule): ``sampler(noise, labels)``."""

    def __init__(self, model: nn.Module, source: str, info: dict[str, Any], *, backend: str = "eager") -> None:
        super().__init__()
        self.model = model.eval()
        self.source = source
        self.info = info
        self.backend = backend
        self.model_dtype = next(model.parameters()).dtype
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        ns = _exec_source(source, f"<l2c-compiled-{digest}>")
        self._sample = ns["sample"]
        steps = [types.MethodType(fn, self) for fn in ns["STEPS"]]
        if backend == "inductor":
            steps = [torch.compile(s, fullgraph=True, dynamic=False) for s in steps]
        self.steps = steps

    @property
    def cfg(self) -> bool:
        """Whether classifier-free guidance is batched into every call."""
        return bool(self.info.get("cfg", True))

    def forward(self, noise: torch.Tensor, labels: torch.Tensor, cfg_scale: float | torch.Tensor | None = None) -> torch.Tensor:
        """Run the whole trajectory from ``noise`` (N, C, H, W) for ``labels`` (N,); return latents."""
        expected = (self.model.in_channels, self.model.input_size, self.model.input_size)
        if noise.dim() != 4 or tuple(noise.shape[1:]) != expected:
            raise L2CError(f"noise must have shape (N, {', '.join(map(str, expected))}), got {tuple(noise.shape)}")
        if labels.shape != (noise.shape[0],):
            raise L2CError(f"labels must have shape ({noise.shape[0]},), got {tuple(labels.shape)}")
        if self.cfg and cfg_scale is None:
            raise L2CError("this sampler was compiled with classifier-free guidance: pass cfg_scale")
        scale = torch.as_tensor(1.0 if cfg_scale is None else cfg_scale, dtype=torch.float32, device=noise.device)
        with torch.no_grad():
            return self._sample(self, noise, labels.to(noise.device), scale)

    # ── artifacts ────────────────────────────────────────────────────────────────────────────
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact folder atomically (a temp folder renamed into place)."""
        from safetensors.torch import save_file

        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            (tmp / "sampler.py").write_text(self.source, encoding="utf-8")
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / "weights.safetensors"))
            manifest = {
                "format": ARTIFACT_FORMAT,
                "version": ARTIFACT_VERSION,
                "l2c_compile": __version__,
                "torch": torch.__version__,
                **{k: v for k, v in self.info.items() if k != "backend"},
                "files": {name: _sha256(tmp / name) for name in FILES},
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str) + "\n", encoding="utf-8")
            old = None
            if target.exists():
                old = target.with_name(f".{target.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                target.rename(old)
            tmp.rename(target)
            if old is not None:
                shutil.rmtree(old)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an artifact's manifest and file hashes; L2CError on any mismatch."""
    root = Path(directory)
    if not root.is_dir():
        raise L2CError(f"artifact folder {root} does not exist")
    path = root / "manifest.json"
    if not path.is_file():
        raise L2CError(f"{root} is not an l2c-compile artifact: manifest.json is missing")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise L2CError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if manifest.get("format") != ARTIFACT_FORMAT:
        raise L2CError(f"{path} is not an l2c-compile artifact manifest")
    if manifest.get("version") != ARTIFACT_VERSION:
        raise L2CError(f"artifact format version {manifest.get('version')} is not supported "
                       f"(this l2c-compile reads version {ARTIFACT_VERSION}); recompile it")
    for name in FILES:
        file = root / name
        if not file.is_file():
            raise L2CError(f"artifact {root} is missing {name}")
        expected = manifest.get("files", {}).get(name)
        if expected is None or _sha256(file) != expected:
            raise L2CError(f"artifact {root}: {name} does not match its sha256 in manifest.json (modified or corrupt)")
    return manifest


def build_from_info(info: dict[str, Any]) -> nn.Module:
    """Rebuild a model from the ``model`` record of a manifest (family + constructor kwargs)."""
    from l2c_compile.models.registry import FAMILIES

    family = info.get("family")
    if family not in FAMILIES or not isinstance(info.get("kwargs"), dict):
        raise L2CError(f"artifact manifest names no buildable model (family {family!r})")
    try:
        model = FAMILIES[family](**info["kwargs"])
    except TypeError as exc:
        raise L2CError(f"artifact manifest has a bad model config: {exc}") from None
    model.model_name = info.get("name", family)
    return model.eval()


def load(directory: str | os.PathLike[str], *, device: str | torch.device | None = None,
         backend: str = "eager") -> CompiledSampler:
    """Load a saved artifact (hashes verified, no unpickling) as a :class:`CompiledSampler`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    root = Path(directory)
    manifest = read_manifest(root)
    model = build_from_info(manifest["model"])
    try:
        state = load_file(str(root / "weights.safetensors"))
    except (SafetensorError, OSError) as exc:
        raise L2CError(f"artifact {root}: cannot read weights.safetensors ({exc})") from None
    dtype = getattr(torch, manifest.get("dtype", "float32"))
    model = model.to(dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise L2CError(f"artifact {root}: weights do not fit {manifest['model'].get('name')} "
                       f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    if device is not None:
        model = model.to(device)
    source = (root / "sampler.py").read_text(encoding="utf-8")
    info = {k: v for k, v in manifest.items() if k not in ("format", "version", "files", "l2c_compile", "torch")}
    return CompiledSampler(model, source, info, backend=backend)
