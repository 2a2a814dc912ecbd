"""Resumable training checkpoints: ``OUT.ckpt`` beside the router file, always written atomically.

A checkpoint holds the whole router table, the AdamW state, the step reached, the run's
configuration and the loss history. Every random draw of an iteration is a function of
(seed, step, shard), so this is all a run needs to continue exactly where it stopped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from l2c_compile.errors import L2CError
from l2c_compile.inputs import input_file
from l2c_compile.io import atomic_path
from l2c_compile.router.objective import RouterLogits

CHECKPOINT_FORMAT = "l2c-router-checkpoint"
CHECKPOINT_VERSION = 1
# May change between a run and its resumption: none of them alters an iteration (the effective
# shard count is compared through the run description instead of the ``shards`` option).
FREE_FIELDS = ("steps", "checkpoint_every", "threshold", "shards")
# Fields added after checkpoints were first written, with the value every older run had.
LATER_FIELDS = {"objective": "step", "cfg_scale": None, "lam_schedule": "constant"}


def checkpoint_path(output: str | os.PathLike[str]) -> Path:
    """Where the resumable checkpoint of router file ``output`` lives: ``output + ".ckpt"``."""
    p = Path(output)
    return p.with_name(p.name + ".ckpt")


def save_checkpoint(
    path: Path,
    step: int,
    router: RouterLogits,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    run: dict[str, Any],
    history: list[dict[str, float]],
) -> None:
    """Write the training state after ``step`` iterations (atomically: never half a file)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "logits": router.logits(),
        "optimizer": optimizer.state_dict(),
        "config": config,
        "run": run,
        "history": history,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors and plain data only: ``weights_only`` loading)."""
    input_file(path, "training checkpoint")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad zip/pickle
        from l2c_compile.filekind import torch_load_problem

        with path.open("rb") as fh:
            head = fh.read(512)
        raise L2CError(
            f"{path.name}: not a readable training checkpoint: {torch_load_problem(exc, head)}"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise L2CError(f"{path.name}: not an l2c-compile training checkpoint")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise L2CError(f"{path.name}: unsupported checkpoint version {obj.get('version')!r}")
    return obj


def checkpoint_step(path: Path | None) -> int | None:
    """The step a readable checkpoint at ``path`` reached, else None."""
    if path is None or not path.is_file():
        return None
    try:
        return int(read_checkpoint(path)["step"])
    except L2CError:
        return None


def check_resumable(path: Path | None, config: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint at ``path`` when a run with ``config`` can resume it: it exists, loads
    safely, was made with the same settings (all but :data:`FREE_FIELDS`) and has not passed
    ``config["steps"]``; L2CError otherwise. Cheap, so the CLI calls it before drawing any data."""
    if path is None or not path.exists():
        raise L2CError(f"nothing to resume: checkpoint {path} not found")
    obj = read_checkpoint(path)
    saved = obj.get("config")
    if not isinstance(saved, dict) or not isinstance(obj.get("run"), dict):
        raise L2CError(f"{path.name}: not an l2c-compile training checkpoint (no config or run record)")
    for key, value in config.items():
        was = saved.get(key, LATER_FIELDS.get(key))
        if key not in FREE_FIELDS and was != value:
            raise L2CError(
                f"{path.name}: checkpoint was made with {key}={was!r}, this run has {value!r}"
            )
    reached, steps = obj.get("step"), config.get("steps")
    if isinstance(reached, int) and isinstance(steps, int) and reached > steps:
        # Its router has seen more steps than this run would record: resuming cannot shorten it.
        raise L2CError(
            f"{path.name}: checkpoint is at step {reached}, past this run's {steps} steps; "
            f"resume with steps >= {reached}"
        )
    return obj


def load_checkpoint(
    path: Path | None,
    router: RouterLogits,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    run: dict[str, Any],
) -> tuple[int, list[dict[str, float]]]:
    """Restore ``router`` and ``optimizer`` in place; (step reached, history so far).

    Refuses a checkpoint made with other settings (only ``steps`` and ``checkpoint_every`` may
    change, and θ, which only affects the reported skip ratio), since continuing it would not
    reproduce any single run.
    """
    obj = check_resumable(path, config)
    for key, value in run.items():
        if obj["run"].get(key) != value:
            raise L2CError(
                f"{path.name}: checkpoint was made for {key}={obj['run'].get(key)!r}, this run has {value!r}"
            )
    logits = obj["logits"]
    if tuple(logits.shape) != tuple(router.table.shape):
        raise L2CError(
            f"{path.name}: checkpoint logits have shape {list(logits.shape)}, "
            f"expected {list(router.table.shape)}"
        )
    with torch.no_grad():
        router.table.copy_(logits)
        for r, p in router.rows.items():
            p.copy_(logits[int(r)])
    optimizer.load_state_dict(obj["optimizer"])
    return int(obj["step"]), list(obj["history"])
