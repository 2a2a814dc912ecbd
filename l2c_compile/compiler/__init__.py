"""Compile time: a model, a sampler plan and a schedule in, a :class:`CompiledSampler` out.

``driver.py`` is :func:`compile` (capture, the passes, code generation, the runtime record);
``passes/`` holds one pass per file with the invariants they keep (``passes/INVARIANTS.md``);
``reference.py`` is the eager reference executor every compiled sampler is tested against and
router training runs on; ``guidance.py`` is the one guided model call both executors share.

``compile`` is imported on first use, so that importing ``compiler.reference`` (router training)
does not load the passes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from l2c_compile.compiler.driver import compile

__all__ = ["compile"]


def __getattr__(name: str) -> Any:
    if name == "compile":
        from l2c_compile.compiler.driver import compile

        return compile
    raise AttributeError(f"module 'l2c_compile.compiler' has no attribute {name!r}")
