"""Run time: the compiled sampler, its artifact folder and the machine it runs on.

``sampler.py`` is :class:`CompiledSampler` (how it runs, its ``save``) and ``sampler_inputs.py``
its call contract; ``record.py`` is :class:`CompileRecord`, what a compile made (``sampler.record``;
``sampler.info`` is its JSON); ``artifact.py`` loads a folder (every file checked, the code
regenerated) and ``manifest.py`` is the typed manifest it writes; ``backends.py`` (eager, inductor, regional) and
``cuda_graph.py`` run the step graphs; ``verify.py`` and ``tolerances.py`` check an artifact
against the reference executor; ``features.py`` and ``devices.py`` say what this machine can do.

``CompiledSampler``, ``CompileRecord`` and ``load`` are imported on first use, so that ``runtime.features`` (read by
the kernels and the compiler) loads without the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from l2c_compile.runtime.artifact import load
    from l2c_compile.runtime.record import CompileRecord
    from l2c_compile.runtime.sampler import CompiledSampler

__all__ = ["CompileRecord", "CompiledSampler", "load"]

_LAZY = {"CompiledSampler": "l2c_compile.runtime.sampler", "CompileRecord": "l2c_compile.runtime.record",
         "load": "l2c_compile.runtime.artifact"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'l2c_compile.runtime' has no attribute {name!r}")
