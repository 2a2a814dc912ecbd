"""CUDA-graph capture of a compiled sampler's whole trajectory (``cuda_graph=True``).

Every model call and every sampler update is captured into one ``torch.cuda.CUDAGraph`` on the
first call and replayed after (:class:`GraphedTrajectory`). A graph is specialized to its input
signature (noise shape, dtype, device: :func:`input_signature`), and needs a CUDA device
(:func:`check_cuda_graph_device`). :class:`~l2c_compile.runtime.sampler.CompiledSampler` decides when to
capture, replay or refuse.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from l2c_compile.errors import L2CError

GRAPH_WARMUP_RUNS = 2  # side-stream runs before capture: cuBLAS, Triton and inductor init lazily
Signature = tuple[tuple[int, ...], torch.dtype, torch.device]


def check_cuda_graph_device(device: torch.device | str) -> None:
    """CUDA graphs need a CUDA device; L2CError (one line, with the fix) for anything else."""
    if torch.device(device).type != "cuda":
        raise L2CError(
            f"cuda_graph=True needs the model on a CUDA device, got {torch.device(device)} "
            "(pass device='cuda', or cuda_graph=False)"
        )


def input_signature(noise: torch.Tensor) -> Signature:
    """What a captured graph is specialized to: noise shape (hence batch), dtype and device."""
    return tuple(noise.shape), noise.dtype, noise.device


def describe_signature(sig: Signature) -> str:
    """A signature in words, for error messages: ``noise (2, 4, 8, 8) float32 on cpu``."""
    shape, dtype, device = sig
    return f"noise {shape} {str(dtype).removeprefix('torch.')} on {device}"


class GraphedTrajectory:
    """The sampling loop ``run(noise, labels, cfg_scale)`` captured once and replayed.

    Static buffers hold the inputs; each call copies its inputs in, replays, and returns a *clone*
    of the static output: the next replay overwrites that buffer, and a caller keeping an earlier
    result (a batch of images queued for decoding) must not see it change. The clone costs one
    latent-sized copy, negligible next to the trajectory. The graph reads the weights through the
    pointers it was captured with, so it records them and reports itself stale when they move.

    Why the generated ``sample`` is capture-safe: its timestep vectors are ``torch.full(...,
    device=dev)`` (an allocation from the graph's pool plus a fill kernel whose value is a kernel
    argument — no host→device copy); casts and the sampler updates are plain kernels; step graphs
    hold no host syncs (passes/INVARIANTS.md, rule 3); the fused epilogues launch Triton kernels on
    the current stream with host-side launch configs only; inductor steps compile, and Triton JITs,
    during the warm-up runs, which use the same shapes and grad mode as the capture.
    """

    def __init__(
        self,
        run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
        noise: torch.Tensor,
        labels: torch.Tensor,
        cfg_scale: torch.Tensor,
        weights: list[torch.Tensor],
        *,
        warmup: int = GRAPH_WARMUP_RUNS,
    ) -> None:
        self.signature = input_signature(noise)
        self.static_noise = noise.clone()  # (N, C, H, W)
        self.static_labels = labels.clone()  # (N,)
        self.static_scale = cfg_scale.detach().clone()  # ()
        self._weights = weights
        self._pointers = self._weight_pointers()
        self.replays = 0
        self.static_out, self._replay = self._capture(run, warmup)

    def _weight_pointers(self) -> tuple[int, ...]:
        return tuple(w.data_ptr() for w in self._weights)

    def _capture(
        self, run: Callable[..., torch.Tensor], warmup: int
    ) -> tuple[torch.Tensor, Callable[[], None]]:
        """Warm up on a side stream, then record one run; return the static output and replay."""
        inputs = (self.static_noise, self.static_labels, self.static_scale)
        side = torch.cuda.Stream(device=self.static_noise.device)
        side.wait_stream(torch.cuda.current_stream(self.static_noise.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                run(*inputs)
        torch.cuda.current_stream(self.static_noise.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's CUDA work (a server's) must not invalidate this capture,
        # while an unsafe call (a host sync) on this thread still fails loudly.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = run(*inputs)
        return out, graph.replay

    def matches(self, noise: torch.Tensor) -> bool:
        """Whether ``noise`` has the captured shape, dtype and device."""
        return input_signature(noise) == self.signature

    def stale(self) -> bool:
        """Whether any weight moved since capture (``.to()``, ``.float()``): replay would read freed memory."""
        return self._weight_pointers() != self._pointers

    def describe(self) -> str:
        """The captured signature in words, for error messages."""
        return describe_signature(self.signature)

    def __call__(
        self, noise: torch.Tensor, labels: torch.Tensor, cfg_scale: float | torch.Tensor
    ) -> torch.Tensor:
        """Copy the inputs into the static buffers, replay, return a copy of the latents."""
        self.static_noise.copy_(noise)
        self.static_labels.copy_(labels)
        if isinstance(cfg_scale, torch.Tensor):
            self.static_scale.copy_(cfg_scale.reshape(()))
        else:
            self.static_scale.fill_(float(cfg_scale))  # a kernel argument: no host→device copy
        self._replay()
        self.replays += 1
        return self.static_out.clone()
