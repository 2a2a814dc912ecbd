"""The compiled sampler: :class:`CompiledSampler`, how it runs, and its ``save``.

An artifact is a folder::

    manifest.json        format/version, versions, model config, sampler, NFE, dtype, schedule,
                         pass reports, and the sha256 of every other file (:mod:`l2c_compile.runtime.manifest`)
    sampler.py           the generated code (step graphs + unrolled loop), for people to read
    weights.safetensors  the model's state dict

Loading (:mod:`l2c_compile.runtime.artifact`) regenerates ``sampler.py`` from the manifest's data and
refuses a copy that differs: it never runs code it did not generate, and never unpickles.

Precision: the model (CFG combination included) runs in the artifact's dtype; the sampler state
and every update ``x = a·x + b·ε`` stay in float32. ``forward`` computes in float32 whatever the
noise dtype (half, float64), the generated loop casts each model input down (``x_in.to(dt)``) and each ε back up
(``.to(x.dtype)``), so a bf16 artifact returns float32 latents. Why: an update is a difference
of large terms (the first DDIM-6 step on the linear schedule is ``6.16·x − 5.16·ε``), and rounding
the state to bf16's 8-bit mantissa after every step adds error the network never made; on the
tiny test models a bf16 state measured up to 4× the error of a float32 one (tests/test_precision.py).
The state costs one latent-sized float32 tensor, nothing next to the activations.

CUDA graphs (``cuda_graph=True``): the whole trajectory — every model call and every sampler
update — is captured into one ``torch.cuda.CUDAGraph`` on the first call and replayed after; see
:mod:`l2c_compile.runtime.cuda_graph`.
"""

from __future__ import annotations

import hashlib
import linecache
import os
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from l2c_compile.errors import L2CError
from l2c_compile.families import model_dtype
from l2c_compile.runtime.backends import compile_regions, compile_step
from l2c_compile.runtime.cuda_graph import (
    GraphedTrajectory,
    check_cuda_graph_device,
    describe_signature,
    input_signature,
)
from l2c_compile.runtime.manifest import FILES, artifact_manifest, manifest_text, sha256_file
from l2c_compile.runtime.record import CompileRecord
from l2c_compile.runtime.sampler_inputs import check_call, check_scale


def _exec_source(source: str, filename: str) -> dict[str, Any]:
    """Execute generated source as a module; register it with linecache for tracebacks/dynamo."""
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"__name__": "l2c_compiled", "__file__": filename}
    exec(compile(source, filename, "exec"), namespace)  # our own generated, hash-verified code
    return namespace


class CompiledSampler(nn.Module):
    """A specialized sampler for one (model, sampler, NFE, schedule): ``sampler(noise, labels)``.

    ``cuda_graph=True`` captures the whole trajectory on the first call and replays it for every
    call with the same noise shape, dtype and device. A different shape is an L2CError rather
    than a silent re-capture: each graph pins its own memory pool (about one trajectory's peak
    activations), so serving several batch sizes should be a deliberate choice — one sampler per
    shape, or :meth:`reset_cuda_graph` to drop the graph and capture the next shape.
    """

    def __init__(
        self,
        model: nn.Module,
        source: str,
        record: CompileRecord,
        *,
        backend: str = "eager",
        cuda_graph: bool = False,
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.source = source
        self.record = record  # what compile made; cuda_graph follows this sampler's own switch
        self.timings: dict[str, float] = {}  # seconds per pass, summed over step graphs; never saved
        self.backend = backend
        self.model_dtype = model_dtype(model)  # what x and y go in as
        self._graph: GraphedTrajectory | None = None
        self._cuda_graph = False
        self.cuda_graph = cuda_graph
        digest = hashlib.sha256(source.encode()).hexdigest()[:12]
        ns = _exec_source(source, f"<l2c-compiled-{digest}>")
        self._sample = ns["sample"]
        # what the trajectory fixes, computed once per call before step 0 (passes/hoist.py); runs
        # eagerly under torch.vmap whatever the backend, inside the CUDA graph when there is one
        self.prologue = types.MethodType(ns["prologue"], self) if "prologue" in ns else None
        steps = [types.MethodType(fn, self) for fn in ns["STEPS"]]
        self.steps = [compile_step(s, backend) for s in steps]
        if backend == "regional":
            compile_regions(self.model)

    @property
    def cuda_graph(self) -> bool:
        """Whether calls run through one captured CUDA graph of the whole trajectory."""
        return self._cuda_graph

    @cuda_graph.setter
    def cuda_graph(self, value: bool) -> None:
        if value:
            check_cuda_graph_device(next(self.model.parameters()).device)
        self._cuda_graph = bool(value)
        self.record = replace(self.record, cuda_graph=bool(value))
        self.reset_cuda_graph()

    def reset_cuda_graph(self) -> None:
        """Drop the captured graph (and its memory pool); the next call captures again."""
        self._graph = None

    @property
    def info(self) -> dict[str, Any]:
        """The compile record as JSON (:meth:`CompileRecord.to_dict`): what ``manifest.json``
        holds besides the format, versions and file hashes. A fresh dict on every read."""
        return self.record.to_dict()

    @property
    def cfg(self) -> bool:
        """Whether classifier-free guidance is batched into every call."""
        return self.record.cfg

    def forward(
        self,
        noise: torch.Tensor,
        labels: torch.Tensor | None,
        cfg_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the whole trajectory; return the final latents ``(N, C, H, W)`` in float32.

        ``noise``: a floating-point tensor ``(N, C, H, W)`` on the weights' device (computed in
        float32 whatever its dtype: the sampler state is float32, module docstring).
        ``labels``: an integer tensor ``(N,)`` of class ids in ``0 .. num_classes-1``; ``None``
        asks for unconditional samples (every row gets the null class, and guidance has no
        effect, so ``cfg_scale`` may be omitted). ``cfg_scale``: a finite number or scalar
        tensor, required when guidance is batched (``self.cfg``) and labels are given.
        Raises :class:`L2CError` (one line) for anything else, and when the weights were moved
        to another dtype after compiling.
        """
        unconditional = labels is None
        name = self.record.model_name or "this model"
        noise, labels = check_call(self.model, self.model_dtype, noise, labels, name, self.cfg)
        if self.cfg and cfg_scale is None and not unconditional:
            raise L2CError(
                "this sampler was compiled with classifier-free guidance: pass cfg_scale "
                "(or labels=None for unconditional samples)"
            )
        value = 1.0 if cfg_scale is None else check_scale(cfg_scale)
        with torch.no_grad():
            if self._cuda_graph:
                return self._graphed(noise, labels, value)
            return self._sample(self, noise, labels, _scale_tensor(value, noise.device))

    def _graphed(
        self, noise: torch.Tensor, labels: torch.Tensor, cfg_scale: float | torch.Tensor
    ) -> torch.Tensor:
        """Replay the captured trajectory, capturing it first when there is none (or it is stale)."""
        check_cuda_graph_device(noise.device)
        graph = self._graph
        if graph is not None and graph.stale():
            graph = self._graph = None  # the weights were moved: the old graph reads freed memory
        if graph is None:
            weights = [*self.model.parameters(), *self.model.buffers()]
            scale = _scale_tensor(cfg_scale, noise.device)
            graph = self._graph = GraphedTrajectory(
                lambda x, y, s: self._sample(self, x, y, s), noise, labels, scale, weights
            )
        elif not graph.matches(noise):
            raise L2CError(
                f"this sampler's CUDA graph was captured for {graph.describe()}, got "
                f"{describe_signature(input_signature(noise))}; call reset_cuda_graph() to capture "
                "the new shape, or use one sampler per shape"
            )
        return graph(noise, labels, cfg_scale)

    # ── artifacts ────────────────────────────────────────────────────────────────────────────
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the artifact folder atomically (``io.atomic_folder``: locked, swapped into place).

        An existing artifact there is replaced; an existing file, or a folder holding anything
        else, is refused untouched (L2CError) before anything is written, and so is a target
        another process is writing. Files and the folder get the user's umask.
        """
        from safetensors.torch import save_file

        from l2c_compile.io import atomic_folder, check_output_folder, output_lock

        target = Path(directory)
        check_output_folder(target, force=True)
        with output_lock(target), atomic_folder(target) as tmp:
            check_output_folder(target, force=True)  # again under the lock: nobody wrote meanwhile
            (tmp / "sampler.py").write_text(self.source, encoding="utf-8")
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / "weights.safetensors"))
            manifest = artifact_manifest(self.record, {name: sha256_file(tmp / name) for name in FILES})
            (tmp / "manifest.json").write_text(manifest_text(manifest), encoding="utf-8")
        return target


def _scale_tensor(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """The guidance scale as a float32 scalar on ``device``; ``torch.full`` fills it on the device."""
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32).reshape(())
    return torch.full((), float(value), dtype=torch.float32, device=device)
