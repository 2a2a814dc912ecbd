"""l2c-compile: Learning-to-Cache schedules compiled into specialized diffusion samplers."""

from __future__ import annotations

from l2c_compile import errors
from l2c_compile.artifact import load
from l2c_compile.compiler import compile
from l2c_compile.runtime import CompiledSampler
from l2c_compile.version import __version__

__all__ = ["CompiledSampler", "__version__", "compile", "errors", "load"]
