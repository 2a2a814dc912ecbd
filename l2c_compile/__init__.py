"""l2c-compile: Learning-to-Cache schedules compiled into specialized diffusion samplers."""

from __future__ import annotations

__version__ = "0.1.0"

from l2c_compile import errors
from l2c_compile.compiler import compile
from l2c_compile.runtime import CompiledSampler, load

__all__ = ["CompiledSampler", "__version__", "compile", "errors", "load"]
