"""l2c-compile: Learning-to-Cache schedules compiled into specialized diffusion samplers.

``compile``, ``load`` and ``CompiledSampler`` are imported on first use (they pull in torch), so
that importing a light submodule — the console script's entry, ``io``, ``errors`` — stays fast
and the command line can handle Ctrl-C from its first moment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from l2c_compile import errors
from l2c_compile.version import __version__

if TYPE_CHECKING:
    from l2c_compile.compiler.driver import compile
    from l2c_compile.runtime.artifact import load
    from l2c_compile.runtime.sampler import CompiledSampler

__all__ = ["CompiledSampler", "__version__", "compile", "errors", "load"]

_LAZY = {"compile": "l2c_compile.compiler.driver", "load": "l2c_compile.runtime.artifact", "CompiledSampler": "l2c_compile.runtime.sampler"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'l2c_compile' has no attribute {name!r}")
