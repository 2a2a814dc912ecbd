"""`l2c-compile train`: learn a router for (model, sampler, NFE) — the paper's Algorithm 1.

Runs as one process, or under ``torchrun`` as data-parallel ranks (each its own shard and cache
step draw; only rank 0 writes files and draws the progress bar).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from l2c_compile.cli.common import (
    HEIGHT,
    NUM_FRAMES,
    WIDTH,
    OutputFormat,
    cli_errors,
    console,
    print_json,
    sample_size,
)
from l2c_compile.errors import L2CError
from l2c_compile.models.select import make_spec_plan, select_model, select_spec, spec_kinds


@cli_errors
def train_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="registry name, see `l2c-compile models`"),
    diffusers: Path | None = typer.Option(None, "--diffusers", help="local diffusers pipeline or model folder "
                                          "(DiT, PixArt, SD3, FLUX.1, Wan), instead of --model"),
    num_frames: int | None = NUM_FRAMES,
    height: int | None = HEIGHT,
    width: int | None = WIDTH,
    prompts: Path | None = typer.Option(None, "--prompts", help="text-conditioned models (PixArt, SD3, FLUX.1, Wan): "
                                        "one prompt per "
                                        "line (encoded with the --diffusers pipeline's text encoders), or precomputed "
                                        "prompt_embeds in a .safetensors file; x0 is drawn from the model"),
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", help="model weights (official or own)"
    ),
    init: str | None = typer.Option(None, "--init", help="'random': seeded non-degenerate weights"),
    seed: int = typer.Option(
        0, "--seed", help="seed for --init random and for every training draw"
    ),
    sampler: str | None = typer.Option(
        None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)"
    ),
    nfe: int = typer.Option(..., "--nfe", help="number of model calls of the sampler"),
    data: str = typer.Option(
        "self",
        "--data",
        help="'self' (data-free), an image folder, or a .safetensors/.npz/.npy file",
    ),
    vae: Path | None = typer.Option(
        None, "--vae", help="local diffusers AutoencoderKL folder (images for latent models)"
    ),
    pool_size: int = typer.Option(
        256, "--pool-size", help="x0 samples drawn from the model with --data self (trajectory: labels)"
    ),
    lam: float | None = typer.Option(
        None, "--lam", help="λ, weight of Σ scores (default: the recipe's, dit 5e-6, uvit 0.1)"
    ),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate"),
    steps: int = typer.Option(1000, "--steps", help="training iterations"),
    batch_size: int = typer.Option(64, "--batch-size", help="global batch size"),
    shards: int | None = typer.Option(
        None,
        "--shards",
        help="split the global batch into shards, each with its own cache-step draw (default: world size)",
    ),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="dit (MSE, clamp ±5) | uvit (sum of squares, no clamp); default by model family",
    ),
    mode: str = typer.Option(
        "cache", "--mode", help="cache (learning-to-cache) | drop (learning-to-drop baseline)"
    ),
    threshold: float | None = typer.Option(
        None, "--threshold", help="θ for the reported skip ratio (default: dit 0.1, uvit 0.9)"
    ),
    ste_threshold: float | None = typer.Option(
        None, "--ste-threshold", help="straight-through hard mask 1[σ > thr] in the forward pass"
    ),
    label_dropout: float = typer.Option(
        0.1, "--label-dropout", help="CFG label dropout probability (step objective)"
    ),
    objective: str = typer.Option(
        "step",
        "--objective",
        help="step (the paper's one-step target) | trajectory (the final sample's error through "
        "every call, after HarmoniCa; about 3 sampler runs per iteration)",
    ),
    cfg_scale: float | None = typer.Option(
        None, "--cfg-scale", help="trajectory objective: CFG scale to sample with (default: the model's)"
    ),
    lam_schedule: str = typer.Option(
        "constant",
        "--lam-schedule",
        help="λ over the cache steps in sampling order: constant (the paper) | rising (0 → 2λ: "
        "caching pushed to the last steps) | falling (2λ → 0); the ramps keep λ's mean",
    ),
    checkpoint_every: int = typer.Option(
        1000, "--checkpoint-every", help="write OUT.ckpt every N steps (0: only at the end)"
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue from OUT.ckpt (same result as an uninterrupted run)"
    ),
    export_official: Path | None = typer.Option(
        None, "--export-official", help="also write the router in the official layout"
    ),
    device: str | None = typer.Option(
        None, "--device", help="cpu | cuda (default: cuda if available; torchrun: one GPU per rank)"
    ),
    out: Path = typer.Option(..., "--out", "-o", help="router file to write (safetensors)"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Train a Learning-to-Cache router (the model stays frozen)."""
    from l2c_compile.io import check_output_file, hold_outputs
    from l2c_compile.router import (
        RECIPES,
        TrainConfig,
        checkpoint_path,
        default_recipe,
        init_distributed,
    )
    from l2c_compile.schedule.router_files import check_official_kinds

    check_output_file(out, "router")  # before training, not after it
    if export_official is not None:
        check_output_file(export_official, "official router")
    rank, world, dist_device = init_distributed()
    # Rank 0 writes: it locks every output before any work, so a second writer, or a folder that is
    # unwritable or full, is one line now rather than after training.
    outputs = (out, checkpoint_path(out), export_official) if rank == 0 else ()
    try:
        with hold_outputs(*outputs):
            target = _device(device, world, dist_device)  # before any work: one line if unavailable
            size = sample_size(num_frames, height, width)
            target_spec = select_spec(model, diffusers, size)
            if export_official is not None:  # the official layouts hold attention and MLP only
                check_official_kinds(spec_kinds(target_spec), export_official)
            text = bool(getattr(target_spec, "text_conditioned", False))
            if text and prompts is None:
                raise L2CError("this model draws from text: pass --prompts FILE (one prompt per line, or prompt_embeds "
                               "in a .safetensors file)")
            if prompts is not None and not text:
                raise L2CError("--prompts is for text-conditioned models (a PixArt, SD3, FLUX.1 or Wan --diffusers "
                               "folder)")
            if prompts is not None and data != "self":
                raise L2CError("--prompts trains data-free: drop --data")
            spec, net = select_model(model, diffusers, checkpoint, init, seed, size)
            net = net.to(target)
            plan = make_spec_plan(spec, sampler, nfe)
            recipe_name = recipe or default_recipe(spec.family)
            if recipe_name not in RECIPES:
                raise L2CError(f"unknown recipe {recipe_name!r}; choose dit or uvit")
            config = TrainConfig(
                lam=RECIPES[recipe_name].lam if lam is None else lam,
                lr=lr,
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                recipe=recipe_name,
                mode=mode,
                threshold=threshold,
                ste_threshold=ste_threshold,
                label_dropout=label_dropout,
                shards=shards,
                checkpoint_every=checkpoint_every,
                objective=objective,
                cfg_scale=_cfg_scale(spec, objective, cfg_scale),
                lam_schedule=lam_schedule,
            )
            show = fmt == OutputFormat.rich and rank == 0
            summary = _train(
                spec,
                net,
                plan,
                config,
                data=data,
                prompts=(prompts, diffusers) if prompts is not None else None,
                vae=vae,
                pool_size=pool_size,
                out=out,
                resume=resume,
                export_official=export_official,
                show=show,
            )
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    if rank != 0:
        return
    summary["world_size"] = world
    if fmt == OutputFormat.json:
        print_json(summary)
        return
    table = Table(title=f"router → {out}", show_header=False)
    for k, v in summary.items():
        if v is not None:
            table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)


def _cfg_scale(spec, objective: str, given: float | None) -> float | None:
    """The trajectory objective samples as inference does: the model's own CFG unless given."""
    if objective != "trajectory":
        if given is not None:
            raise L2CError("--cfg-scale applies to --objective trajectory only")
        return None
    return spec.default_cfg_scale if given is None else given


def _device(device: str | None, world: int, dist_device):
    if device is None or world > 1:  # under torchrun each rank takes its own device
        return dist_device
    from l2c_compile.runtime.devices import resolve_device

    return resolve_device(device)


def _train(
    spec,
    net,
    plan,
    config,
    *,
    data: str,
    prompts: tuple[Path, Path] | None,
    vae: Path | None,
    pool_size: int,
    out: Path,
    resume: bool,
    export_official: Path | None,
    show: bool,
) -> dict:
    """Open the data, train, write the files; the summary the command prints."""
    from l2c_compile.router import checkpoint_path, load_vae, open_data, train
    from l2c_compile.schedule.router_files import export_official as write_official

    if resume:  # a missing, unsafe or mismatched checkpoint is refused before any data is drawn
        from l2c_compile.router.checkpoint import check_resumable

        check_resumable(checkpoint_path(out), config.to_dict())
    device = next(net.parameters()).device
    encoder = load_vae(vae, device) if vae is not None else None
    if prompts is not None:
        dataset = _prompt_data(spec, net, plan, prompts, pool_size, config.seed, show)
    else:
        dataset = open_data(
            data,
            spec,
            model=net,
            plan=plan,
            vae=encoder,
            pool_size=pool_size,
            seed=config.seed,
            progress=show,
            labels_only=config.objective == "trajectory",  # it samples from noise itself
        )
    # Ctrl-C raises TrainingInterrupted, whose note the CLI's interrupt line carries (cli/interrupts.py).
    result = train(net, plan, dataset, config, model_name=spec.name, output=out, resume=resume, progress=show)
    if export_official is not None:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
            write_official(export_official, result.logits, getattr(spec, "router_family", spec.family),
                           kinds=spec_kinds(spec))
    last = result.history[-1] if result.history else {}
    return {
        "router": str(out),
        "checkpoint": str(checkpoint_path(out)),
        "official": str(export_official) if export_official else None,
        "model": spec.name,
        "sampler": plan.sampler,
        "nfe": plan.nfe,
        "recipe": config.recipe,
        "mode": config.mode,
        "objective": config.objective,
        "cfg_scale": config.cfg_scale,
        "lam": config.lam,
        "lam_schedule": config.lam_schedule,
        "steps": config.steps,
        "resumed_from": result.resumed_from,
        "data": dataset.description,
        "trained_rows": list(result.trained_rows),
        "final_loss": last.get("loss"),
        "final_reg": last.get("reg"),
        "skip_ratio": last.get("skip"),
        "threshold": config.theta,
    }


def _prompt_data(spec, net, plan, prompts: tuple[Path, Path], pool_size: int, seed: int, show: bool):
    """A text-to-image model's data-free pool: conditions from the prompts file, x0 drawn from the model."""
    from l2c_compile.router.prompts import draw_prompt_data, load_conditions

    path, folder = prompts
    pipe = None
    if path.suffix != ".safetensors":
        from l2c_compile.diffusers.load import load_pipeline

        if not (folder / "model_index.json").is_file():
            raise L2CError(f"{folder} is a model folder without a text encoder: pass the pipeline folder, "
                           "or precomputed prompt_embeds in a .safetensors file")
        pipe = load_pipeline(folder)
    conds, null, description = load_conditions(path, net, pipe)
    net.set_null_condition(null)
    guided = null if spec.default_cfg_scale > 1 else None  # FLUX.1 samples unguided: no second pass at scale 1
    return draw_prompt_data(net, plan, conds, guided, size=pool_size, seed=seed, cfg_scale=spec.default_cfg_scale,
                            description=description, progress=show)
