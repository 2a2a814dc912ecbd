"""Router training (the paper's Algorithm 1, the learning-to-drop baseline) and its data sources."""

from __future__ import annotations

from l2c_compile.router.checkpoint import checkpoint_path
from l2c_compile.router.data import (
    ImageFolderData,
    TensorData,
    TrainData,
    VaeEncoder,
    draw_self_data,
    load_tensors,
    load_vae,
    open_data,
)
from l2c_compile.router.objective import CacheTarget, RouterLogits, cache_targets, shard_loss
from l2c_compile.router.train import (
    MODES,
    RECIPES,
    Recipe,
    TrainConfig,
    TrainingInterrupted,
    TrainResult,
    default_recipe,
    init_distributed,
    train,
)

__all__ = [
    "MODES",
    "RECIPES",
    "CacheTarget",
    "ImageFolderData",
    "Recipe",
    "RouterLogits",
    "TensorData",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingInterrupted",
    "VaeEncoder",
    "cache_targets",
    "checkpoint_path",
    "default_recipe",
    "draw_self_data",
    "init_distributed",
    "load_tensors",
    "load_vae",
    "open_data",
    "shard_loss",
    "train",
]
