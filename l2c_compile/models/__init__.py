"""Model families (DiT, U-ViT) with official state-dict layouts, and the registry that names them."""

from l2c_compile.models.dit import DiT
from l2c_compile.models.registry import (
    MODELS,
    ModelSpec,
    build_model,
    count_params,
    get_spec,
    init_random,
    load_checkpoint,
    num_blocks,
    save_checkpoint,
)
from l2c_compile.models.uvit import UViT

__all__ = [
    "MODELS",
    "DiT",
    "ModelSpec",
    "UViT",
    "build_model",
    "count_params",
    "get_spec",
    "init_random",
    "load_checkpoint",
    "num_blocks",
    "save_checkpoint",
]
