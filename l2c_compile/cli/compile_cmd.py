"""`l2c-compile compile | verify | sample`: build an artifact, check it, draw with it."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from l2c_compile.cli.common import OutputFormat, cli_errors, console, print_json
from l2c_compile.errors import L2CError
from l2c_compile.verify import compile_summary, verify_artifact


def build_for_cli(model_name: str, checkpoint: Path | None, init: str | None, seed: int):
    """The registry model, with a checkpoint loaded or seeded random weights."""
    from l2c_compile.models.registry import build_model, get_spec, init_random, load_checkpoint

    spec = get_spec(model_name)
    model = build_model(spec)
    if checkpoint is not None and init is not None:
        raise L2CError("pass either --checkpoint or --init random, not both")
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    elif init == "random":
        init_random(model, seed)
    elif init is not None:
        raise L2CError(f"unknown --init {init!r}; the only choice is 'random'")
    elif getattr(spec, "checkpoint", None):
        load_checkpoint(model, spec.checkpoint)
    else:
        raise L2CError(f"{spec.name} ships no weights: pass --checkpoint PATH or --init random")
    return spec, model.eval()


def model_for_cli(model_name: str | None, diffusers: Path | None, checkpoint: Path | None, init: str | None,
                  seed: int):
    """``(spec, model)`` from ``--model`` (registry) or ``--diffusers DIR`` (a local diffusers folder)."""
    if diffusers is None:
        if model_name is None:
            raise L2CError("pass --model NAME (see `l2c-compile models`) or --diffusers DIR")
        return build_for_cli(model_name, checkpoint, init, seed)
    if model_name is not None or checkpoint is not None or init is not None:
        raise L2CError("--diffusers DIR brings its own model and weights: drop --model, --checkpoint and --init")
    from l2c_compile.diffusers.load import load_diffusers
    from l2c_compile.diffusers.spec import spec_for_folder

    spec = spec_for_folder(diffusers)
    return spec, load_diffusers(diffusers)


def spec_for_cli(model_name: str | None, diffusers: Path | None):
    """The spec (no weights) for ``--model`` or ``--diffusers DIR``; exactly one must be given."""
    if (model_name is None) == (diffusers is None):
        raise L2CError("pass exactly one of --model NAME and --diffusers DIR")
    if diffusers is not None:
        from l2c_compile.diffusers.spec import spec_for_folder

        return spec_for_folder(diffusers)
    from l2c_compile.models.registry import get_spec

    return get_spec(model_name)


def plan_for(spec, sampler: str | None, nfe: int, **options):
    """The sampler plan for a model spec (its noise schedule and time convention)."""
    from l2c_compile.samplers import make_plan

    return make_plan(sampler or spec.default_sampler, nfe, noise_schedule=spec.noise_schedule,
                     time_input=spec.time_input, **options)


@cli_errors
def compile_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="registry name, see `l2c-compile models`"),
    diffusers: Path | None = typer.Option(None, "--diffusers", help="local diffusers pipeline or model folder "
                                          "(DiTTransformer2DModel), instead of --model"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="official or own checkpoint"),
    init: str | None = typer.Option(None, "--init", help="'random': seeded non-degenerate weights"),
    seed: int = typer.Option(0, "--seed", help="seed for --init random"),
    sampler: str | None = typer.Option(None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)"),
    nfe: int = typer.Option(..., "--nfe", help="number of model calls"),
    schedule: Path | None = typer.Option(None, "--schedule", help="schedule JSON (omit: all-compute)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    backend: str = typer.Option("eager", "--backend", help="eager | inductor"),
    cfg: bool = typer.Option(True, "--cfg/--no-cfg", help="batch classifier-free guidance"),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="fuse reuse epilogues into kernels"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph/--no-cuda-graph",
                                    help="capture the whole trajectory in one CUDA graph (CUDA only)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact folder to write"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Compile a schedule into a specialized sampler artifact."""
    import l2c_compile
    from l2c_compile.schedule import Schedule

    spec, net = model_for_cli(model, diffusers, checkpoint, init, seed)
    plan = plan_for(spec, sampler, nfe)
    sched = None
    if schedule is not None:
        sched = Schedule.load(schedule)
        sched.validate_for(spec.name, len(net.transformer_blocks()), plan)
    with console.status(f"compiling {spec.name} · {plan.sampler} · NFE {nfe}…"):
        compiled = l2c_compile.compile(net, plan, sched, dtype=dtype, device=device, backend=backend,
                                       cfg=cfg, fuse=fuse, model_info=spec.to_dict(), cuda_graph=cuda_graph)
        compiled.save(out)
    summary = compile_summary(compiled.info)
    if fmt == OutputFormat.json:
        print_json({"artifact": str(out), **summary})
        return
    table = Table(title=f"compiled → {out}", show_header=False)
    for k, v in summary.items():
        table.add_row(k, str(v))
    console.print(table)


@cli_errors
def verify_cmd(
    directory: Path = typer.Argument(..., help="artifact folder"),
    batch: int = typer.Option(2, "--batch"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device"),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale"),
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                           help="override the artifact's CUDA-graph choice"),
    tolerance: float | None = typer.Option(None, "--tolerance", help="fail above this max_rel_error "
                                           "(default 1e-5 for float32, 5e-2 for bf16/fp16)"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Check an artifact against the reference executor on seeded inputs."""
    with console.status("running compiled sampler and reference executor…"):
        checked = verify_artifact(directory, batch=batch, seed=seed, device=device, cfg_scale=cfg_scale,
                                  cuda_graph=cuda_graph, tolerance=tolerance)
    result = checked.to_dict()
    if fmt == OutputFormat.json:
        print_json(result)
    else:
        table = Table(title="verify", show_header=False)
        for k, v in result.items():
            table.add_row(k, f"{v:.3e}" if isinstance(v, float) and k.endswith("error") else str(v))
        console.print(table)
    if not checked.ok:
        raise typer.Exit(1)


@cli_errors
def sample_cmd(
    directory: Path = typer.Argument(..., help="artifact folder"),
    classes: str = typer.Option("0,1,2,3", "--classes", help="comma-separated class labels"),
    seed: int = typer.Option(0, "--seed"),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale"),
    vae: Path | None = typer.Option(None, "--vae", help="local diffusers AutoencoderKL folder (latent models)"),
    preview: bool = typer.Option(False, "--latent-preview", help="latent models without a VAE: show raw channels"),
    device: str = typer.Option("cpu", "--device"),
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                           help="override the artifact's CUDA-graph choice"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write"),
) -> None:
    """Draw samples with an artifact and write them as an image grid."""
    from l2c_compile.artifact import load
    from l2c_compile.images import as_pictures, decode_latents, latents_preview, make_grid, save_png

    try:
        labels = torch.tensor([int(c) for c in classes.split(",") if c.strip()], dtype=torch.long)
    except ValueError:
        raise L2CError(f"--classes must be comma-separated integers, got {classes!r}") from None
    compiled = load(directory, device=device, cuda_graph=cuda_graph)
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= compiled.model.null_class:
        raise L2CError(f"class labels must lie in 0..{compiled.model.null_class - 1}")
    pixel = bool(compiled.info["model"].get("pixel_space", False))
    if not pixel and vae is None and not preview:  # pixel models with 1/3 channels are pictures as-is
        raise L2CError("this model samples latents: pass --vae PATH (diffusers AutoencoderKL folder) "
                       "or --latent-preview")
    if compiled.cfg and cfg_scale is None:
        cfg_scale = float(compiled.info["model"].get("default_cfg_scale", 4.0))
    gen = torch.Generator().manual_seed(seed)
    m = compiled.model
    noise = torch.randn(len(labels), m.in_channels, m.input_size, m.input_size, generator=gen).to(device)
    with console.status(f"sampling {len(labels)} images…"):
        x = compiled(noise, labels.to(device), cfg_scale if compiled.cfg else None)
    if pixel:
        images = as_pictures(x)
    elif vae is not None:
        images = decode_latents(x, vae)
    else:
        images = latents_preview(x)
    save_png(make_grid(images, scale=max(1, 128 // images.shape[-1])), out)
    console.print(f"wrote {out} ({len(labels)} samples)")
