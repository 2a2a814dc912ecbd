"""Which model a user means: a registry name or a diffusers folder, with its weights and plan.

The library side of the model options every command shares (``--model NAME`` or ``--diffusers
DIR``, ``--checkpoint``, ``--init random``, ``--sampler``): ``compile``, ``train``, ``schedule``,
``eval`` and the benchmarks resolve a model here, so they agree on what a name means and on each
error line. A *spec* is a :class:`~l2c_compile.models.spec.ModelSpec` (registry) or a
:class:`~l2c_compile.diffusers.spec.DiffusersSpec` (a local diffusers folder); both carry the
family name, the noise schedule, the time convention and the default sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from l2c_compile.errors import L2CError

_ONE_OF = "pass --model NAME (see `l2c-compile models`) or --diffusers DIR"
_DIFFUSERS_OWN = "--diffusers DIR brings its own model and weights: drop --model, --checkpoint and --init"


def registry_model(model_name: str, checkpoint: Path | None, init: str | None, seed: int) -> tuple[Any, nn.Module]:
    """``(spec, model)`` for a registry name, in eval mode, with ``checkpoint`` loaded, seeded random
    weights (``init="random"``) or the weights the spec ships.

    Raises L2CError (one line) for an unknown name, both or neither weight source where the spec
    ships none, an unknown ``init``, or a checkpoint that does not fit.
    """
    from l2c_compile.models.registry import build_model, get_spec, init_random, load_checkpoint

    spec = get_spec(model_name)
    if checkpoint is not None and init is not None:
        raise L2CError("pass either --checkpoint or --init random, not both")
    if init is not None and init != "random":
        raise L2CError(f"unknown --init {init!r}; the only choice is 'random'")
    if checkpoint is None and init is None and not getattr(spec, "checkpoint", None):
        raise L2CError(f"{spec.name} ships no weights: pass --checkpoint PATH or --init random")
    model = build_model(spec)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    elif init == "random":
        init_random(model, seed)
    else:
        load_checkpoint(model, spec.checkpoint)
    return spec, model.eval()


def select_model(model_name: str | None, diffusers: Path | None, checkpoint: Path | None = None,
                 init: str | None = None, seed: int = 0, size: dict[str, int] | None = None) -> tuple[Any, nn.Module]:
    """``(spec, model)`` from a registry name or a local diffusers folder (exactly one); ``size``:
    a video folder's sample size (:func:`select_spec`)."""
    if diffusers is None:
        if model_name is None:
            raise L2CError(_ONE_OF)
        _no_size(size)
        return registry_model(model_name, checkpoint, init, seed)
    if model_name is not None or checkpoint is not None or init is not None:
        raise L2CError(_DIFFUSERS_OWN)
    from l2c_compile.diffusers.load import load_diffusers
    from l2c_compile.diffusers.spec import spec_for_folder

    spec = spec_for_folder(diffusers, **(size or {}))
    return spec, load_diffusers(diffusers, size=spec.size)


def select_spec(model_name: str | None, diffusers: Path | None, size: dict[str, int] | None = None) -> Any:
    """The spec (no weights built) for a registry name or a diffusers folder (exactly one).
    ``size``: ``num_frames``, ``height``, ``width`` for a folder whose family takes its sample size
    as an option (Wan: ``--num-frames``, ``--height``, ``--width``); L2CError for any other model."""
    if model_name is None and diffusers is None:
        raise L2CError(_ONE_OF)
    if model_name is not None and diffusers is not None:
        raise L2CError(_DIFFUSERS_OWN)
    if diffusers is not None:
        from l2c_compile.diffusers.spec import spec_for_folder

        return spec_for_folder(diffusers, **(size or {}))
    _no_size(size)
    from l2c_compile.models.registry import get_spec

    return get_spec(model_name)


def _no_size(size: dict[str, int] | None) -> None:
    """L2CError when a registry model is given a sample size (its size is its architecture's)."""
    if size:
        options = ", ".join(f"--{k.replace('_', '-')}" for k in size)
        raise L2CError(f"{options}: a registry model's sample size is fixed (these options are for video "
                       "--diffusers folders: Wan)")


def spec_size(spec: Any) -> dict[str, int]:
    """The sample size a spec is made for where its config does not fix it (Wan's frames, height,
    width: ``DiffusersSpec.size``); ``{}`` for every other model."""
    return dict(getattr(spec, "size", None) or {})


def spec_blocks(spec: Any) -> int:
    """Number of cacheable blocks of a registry or diffusers spec."""
    if spec.family == "diffusers":
        return int(spec.depth)
    from l2c_compile.models.registry import num_blocks

    return num_blocks(spec)


def spec_kinds(spec: Any) -> tuple[str, ...]:
    """The sublayer kinds of each block of a spec, from its family's declaration (DiT, U-ViT:
    attention and MLP; PixArt adds cross-attention)."""
    from l2c_compile.families import get_family

    kinds = getattr(spec, "kinds", None)
    return tuple(kinds) if kinds is not None else get_family(spec.family).kinds


def spec_layout(spec: Any):
    """The blocks of a spec and their kinds, known before the weights load: a
    :class:`~l2c_compile.families.vocabulary.Layout`. A diffusers spec knows it from its config
    (SD3's blocks differ); a registry model's blocks all have :func:`spec_kinds`."""
    from l2c_compile.families.vocabulary import Layout

    layout = getattr(spec, "layout", None)
    return layout if isinstance(layout, Layout) else Layout.uniform(spec_blocks(spec), spec_kinds(spec))


def make_spec_plan(spec: Any, sampler: str | None, nfe: int, **options: object):
    """The sampler plan for ``spec`` at ``nfe`` model calls: ``sampler`` or the spec's default, on
    the spec's noise schedule and time convention. A flow-matching pipeline folder's default
    sampler is its own scheduler (SD3's shift; ``DiffusersSpec.scheduler_plan``). L2CError for an
    unknown sampler or bad NFE."""
    from l2c_compile.samplers import make_plan

    if sampler in (None, spec.default_sampler) and not options and hasattr(spec, "scheduler_plan"):
        plan = spec.scheduler_plan(nfe)
        if plan is not None:
            return plan
    return make_plan(sampler or spec.default_sampler, nfe, noise_schedule=spec.noise_schedule,
                     time_input=spec.time_input, **options)


def default_cfg(spec: Any) -> bool:
    """Whether a sampler for ``spec`` batches classifier-free guidance unless told: yes, except for
    a guidance-distilled diffusers family (FLUX.1: the scale is embedded in the condition and its
    pipeline runs true CFG only when asked, ``true_cfg_scale`` > 1)."""
    if getattr(spec, "family", None) != "diffusers":
        return True
    return spec.declaration.guidance != "distilled"
