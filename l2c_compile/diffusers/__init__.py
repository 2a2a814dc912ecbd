"""diffusers models as they are: adapters per diffusers class, loading, and ``compile_pipeline``.

Nothing here changes a diffusers model. An adapter (``dit.py``) wraps one diffusers class so the
compiler and the reference executor see what they see in a DiT (``model(x, t, y)``, ``eps``,
``guide``, ``null_class``) and declares its cacheable sublayers by module path
(``transformer_blocks.{i}.attn1``, ``transformer_blocks.{i}.ff``). diffusers is imported when a
module of this package is.
"""

from __future__ import annotations

from l2c_compile.diffusers.dit import DiffusersDiT
from l2c_compile.diffusers.load import load_diffusers, load_pipeline
from l2c_compile.diffusers.pipelines import CompiledPipeline, compile_pipeline, pipeline_plan

__all__ = ["CompiledPipeline", "DiffusersDiT", "compile_pipeline", "load_diffusers", "load_pipeline",
           "pipeline_plan"]
