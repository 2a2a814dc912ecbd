"""`l2c-compile compile | verify | sample`: build an artifact, check it, draw with it."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from l2c_compile.cli.common import (
    CFG_SCALE_HELP,
    HEIGHT,
    NUM_FRAMES,
    WIDTH,
    OutputFormat,
    cli_errors,
    console,
    print_fallbacks,
    print_json,
    print_labelled,
    progress_bars,
    sample_size,
)
from l2c_compile.compiler.memory import check_sampler_memory
from l2c_compile.compiler.passes.hoist import DEFAULT_LIMIT_BYTES
from l2c_compile.errors import L2CError
from l2c_compile.families import latent_shape
from l2c_compile.models.select import (
    default_cfg,
    make_spec_plan,
    select_model,
    select_spec,
    spec_layout,
)
from l2c_compile.runtime.verify import compile_summary, verify_artifact


@cli_errors
def compile_cmd(
    model: str | None = typer.Option(None, "--model", "-m", help="registry name, see `l2c-compile models`"),
    diffusers: Path | None = typer.Option(None, "--diffusers", help="local diffusers pipeline or model folder "
                                          "(DiT, PixArt, SD3, FLUX.1, Wan), instead of --model"),
    num_frames: int | None = NUM_FRAMES,
    height: int | None = HEIGHT,
    width: int | None = WIDTH,
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="official or own checkpoint"),
    init: str | None = typer.Option(None, "--init", help="'random': seeded non-degenerate weights"),
    seed: int = typer.Option(0, "--seed", help="seed for --init random"),
    sampler: str | None = typer.Option(None, "--sampler", "-s", help="ddim | dpm-solver-2 (default: the model's)"),
    nfe: int = typer.Option(..., "--nfe", help="number of model calls"),
    schedule: Path | None = typer.Option(None, "--schedule", help="schedule JSON (omit: all-compute)"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16 | auto (bf16 where the device has native bf16)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (must exist here)"),
    backend: str = typer.Option("eager", "--backend", help="eager | inductor | regional"),
    cfg: bool | None = typer.Option(None, "--cfg/--no-cfg", help="batch classifier-free guidance (default: on; "
                                    "off for a guidance-distilled model, FLUX.1, whose true CFG is optional)"),
    fuse: bool = typer.Option(True, "--fuse/--no-fuse", help="fuse reuse epilogues into kernels"),
    hoist: bool = typer.Option(True, "--hoist/--no-hoist", help="compute what the trajectory fixes (timestep "
                               "embeddings, adaLN modulations, prompt keys/values) once per call, before step 0"),
    hoist_limit: float = typer.Option(DEFAULT_LIMIT_BYTES / 2**20, "--hoist-limit", help="MiB per image the hoisted "
                                      "tensors may hold; above it hoisting is skipped (and the report says so)"),
    cuda_graph: bool = typer.Option(False, "--cuda-graph/--no-cuda-graph",
                                    help="capture the whole trajectory in one CUDA graph (CUDA only)"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact folder to write (new, empty, or an artifact with --force)"),
    force: bool = typer.Option(False, "--force", help="replace an existing artifact at --out"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Compile a schedule into a specialized sampler artifact."""
    from l2c_compile.io import check_output_folder, output_lock

    # Every input is checked before the first expensive step, and the output path before anything:
    # the lock refuses a second writer of the same folder, and an unwritable or full one.
    check_output_folder(out, force=force)
    if not hoist_limit >= 0 or hoist_limit == float("inf"):
        raise L2CError(f"--hoist-limit must be a finite, non-negative number of MiB, got {hoist_limit}")
    with output_lock(out):
        check_output_folder(out, force=force)  # again under the lock: nobody wrote meanwhile
        compiled = _compile_into(out, model, diffusers, checkpoint, init, seed, sampler, nfe, schedule,
                                 sample_size(num_frames, height, width), dtype=dtype, device=device, backend=backend, cfg=cfg, fuse=fuse,
                                 cuda_graph=cuda_graph, hoist=hoist,
                                 hoist_limit_bytes=round(hoist_limit * 2**20))
    print_fallbacks(compiled.record.fallbacks)
    summary = compile_summary(compiled.record)
    if fmt == OutputFormat.json:
        print_json({"artifact": str(out), **summary})
        return
    table = Table(title=f"compiled → {out}", show_header=False)
    for k, v in summary.items():
        if k == "peak_cache_bytes_per_image":
            table.add_row("cache peak", f"{v / 2**20:,.3f} MiB per sample ({summary['peak_live_cache_entries']} "
                                        "entries at once; the uncached run keeps none)")
        elif k != "fallbacks":  # printed above as lines (print_fallbacks), not as a list in a cell
            table.add_row(k, format_passes(v) if k == "passes" else str(v))
    console.print(table)


def _compile_into(out: Path, model: str | None, diffusers: Path | None, checkpoint: Path | None,
                  init: str | None, seed: int, sampler: str | None, nfe: int, schedule: Path | None,
                  size: dict[str, int], **options):
    """``compile``'s work once the output is locked: check the inputs, compile, save to ``out``
    (``size``: a video folder's ``--num-frames``, ``--height``, ``--width``)."""
    import l2c_compile
    from l2c_compile.compiler.driver import resolve_dtype
    from l2c_compile.models.select import spec_size
    from l2c_compile.runtime.devices import resolve_device
    from l2c_compile.schedule import Schedule
    from l2c_compile.schedule.sizes import check_sample_size

    resolve_dtype(options["dtype"], resolve_device(options["device"]))
    spec = select_spec(model, diffusers, size)
    if options["cfg"] is None:
        options["cfg"] = default_cfg(spec)
    plan = make_spec_plan(spec, sampler, nfe)
    sched = None
    if schedule is not None:  # before the weights load: a wrong schedule should not wait for them
        sched = Schedule.load(schedule)
        sched.check_fits(spec_layout(spec), plan, spec.name)
        check_sample_size(sched, spec_size(spec), "this compile is for")
    spec, net = select_model(model, diffusers, checkpoint, init, seed, size)
    with console.status(f"compiling {spec.name} · {plan.sampler} · NFE {nfe}…"):
        compiled = l2c_compile.compile(net, plan, sched, model_info=spec.to_dict(), **options)
        compiled.save(out)
    return compiled


def format_passes(passes: dict) -> str:
    """The per-pass counters as lines a person reads: ``dce: 349 nodes removed, …``."""
    lines = []
    for name, stats in passes.items():
        parts = [f"{v:,} {k.replace('_', ' ')}" for k, v in stats.items() if v]
        lines.append(f"{name}: {', '.join(parts) if parts else 'no change'}")
    return "\n".join(lines)


@cli_errors
def verify_cmd(
    directory: Path = typer.Argument(..., help="artifact folder"),
    batch: int = typer.Option(2, "--batch"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (must exist here)"),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale", help=CFG_SCALE_HELP),
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                           help="override the artifact's CUDA-graph choice"),
    tolerance: float | None = typer.Option(None, "--tolerance", help="fail above this error (float32: "
                                           "max_rel_error, default 1e-5; bf16/fp16: rms_rel_error, "
                                           "default measured per model, see README)"),
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format"),
) -> None:
    """Check an artifact against the reference executor on seeded inputs (exit 1 if it fails)."""
    with progress_bars():
        checked = verify_artifact(directory, batch=batch, seed=seed, device=device, cfg_scale=cfg_scale,
                                  cuda_graph=cuda_graph, tolerance=tolerance)
    result = checked.to_dict()
    print_fallbacks(checked.fallbacks)
    if fmt == OutputFormat.json:
        print_json(result)
    else:
        table = Table(title="verify", show_header=False)
        for k, v in result.items():
            if k in ("failure", "fallbacks"):
                continue
            table.add_row(k, f"{v:.3e}" if isinstance(v, float) and ("error" in k or k == "tolerance")
                          else str(v))
        console.print(table)
    if not checked.ok:
        print_labelled("verify failed:", checked.failure)
        raise typer.Exit(1)


@cli_errors
def sample_cmd(
    directory: Path = typer.Argument(..., help="artifact folder"),
    classes: str = typer.Option("0,1,2,3", "--classes", help="comma-separated class labels"),
    prompt: list[str] | None = typer.Option(None, "--prompt", help="text-to-image artifacts (PixArt, SD3, FLUX.1): a "
                                            "prompt to draw; repeat for several"),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="with --prompt: the unconditional prompt"),
    pipeline: Path | None = typer.Option(None, "--diffusers", help="with --prompt: the pipeline folder (PixArt, "
                                         "SD3, FLUX.1, Wan) whose text encoders, tokenizers and VAE to use"),
    gif: Path | None = typer.Option(None, "--gif", help="video artifacts (Wan): also write the videos as an "
                                    "animated GIF (the PNG shows each video's frames side by side)"),
    seed: int = typer.Option(0, "--seed"),
    cfg_scale: float | None = typer.Option(None, "--cfg-scale", help=CFG_SCALE_HELP),
    vae: Path | None = typer.Option(None, "--vae", help="local diffusers AutoencoderKL folder (latent models)"),
    preview: bool = typer.Option(False, "--latent-preview", help="latent models without a VAE: show raw channels"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N (must exist here)"),
    cuda_graph: bool | None = typer.Option(None, "--cuda-graph/--no-cuda-graph",
                                           help="override the artifact's CUDA-graph choice"),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write"),
) -> None:
    """Draw samples with an artifact and write them as an image grid."""
    from l2c_compile.images import check_png_path
    from l2c_compile.io import output_lock
    from l2c_compile.runtime.devices import resolve_device

    # Every input is checked before the first model call: a late failure wastes the whole run.
    if prompt or pipeline is not None:
        _sample_prompts(directory, prompt or [], negative_prompt, pipeline, seed, cfg_scale, device, cuda_graph, out,
                        gif)
        return
    if gif is not None:
        raise L2CError("--gif is for video artifacts (Wan), drawn with --prompt TEXT and --diffusers DIR")
    try:
        labels = torch.tensor([int(c) for c in classes.split(",") if c.strip()], dtype=torch.long)
    except ValueError:
        raise L2CError(f"--classes must be comma-separated integers, got {classes!r}") from None
    if labels.numel() == 0:
        raise L2CError("--classes names no class")
    resolve_device(device)
    check_png_path(out)
    with output_lock(out):  # before any work: a second writer, an unwritable or full folder
        n = _sample_classes(directory, labels, seed, cfg_scale, vae, preview, device, cuda_graph, out)
    console.print(f"wrote {out} ({n} samples)")


def _sample_classes(directory: Path, labels: torch.Tensor, seed: int, cfg_scale: float | None, vae: Path | None,
                    preview: bool, device: str, cuda_graph: bool | None, out: Path) -> int:
    """``sample --classes``: draw with the artifact, decode, write the grid; the number drawn."""
    from l2c_compile import progress
    from l2c_compile.images import (
        as_pictures,
        decode_latents,
        latents_preview,
        load_vae_decoder,
        make_grid,
        save_png,
    )
    from l2c_compile.runtime.artifact import load
    from l2c_compile.runtime.sampler_inputs import check_finite_output

    compiled = load(directory, device=device, cuda_graph=cuda_graph)
    print_fallbacks(compiled.record.fallbacks)
    check_sampler_memory(compiled, len(labels), device)
    if hasattr(compiled.model, "example_condition"):
        raise L2CError("this artifact draws from text: pass --prompt TEXT and --diffusers DIR (its pipeline "
                       "folder, for the text encoders and VAE)")
    real = compiled.model.null_class
    if int(labels.min()) < 0 or int(labels.max()) >= real:
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise L2CError(f"--classes: label {bad} is out of range; this model has classes 0..{real - 1}")
    pixel = bool(compiled.record.model.get("pixel_space", False))
    decoder = None
    if not pixel and vae is None and not preview:  # pixel models with 1/3 channels are pictures as-is
        raise L2CError("this model samples latents: pass --vae PATH (diffusers AutoencoderKL folder) "
                       "or --latent-preview")
    if pixel and vae is not None:
        raise L2CError("this model draws pixels, not latents: there is nothing for --vae to decode")
    if not pixel and vae is not None:
        decoder = load_vae_decoder(vae, latent_channels=compiled.model.in_channels, device=device)
    if compiled.cfg and cfg_scale is None:
        cfg_scale = float(compiled.record.model.get("default_cfg_scale", 4.0))
    gen = torch.Generator().manual_seed(seed)
    m = compiled.model
    noise = torch.randn(len(labels), *latent_shape(m), generator=gen).to(device)
    nfe = compiled.record.nfe
    with progress_bars(), progress.task(f"sampling {len(labels)} images", nfe, "model calls"), \
                progress.counting_model_calls(compiled):
        x = compiled(noise, labels.to(device), cfg_scale if compiled.cfg else None)
    check_finite_output(x, f"{out} was not written")
    if pixel:
        images = as_pictures(x)
    elif decoder is not None:
        images = decode_latents(x, decoder)
    else:
        images = latents_preview(x)
    save_png(make_grid(images, scale=max(1, 128 // images.shape[-1])), out)
    return len(labels)


def _sample_prompts(directory: Path, prompts: list[str], negative_prompt: str, pipeline: Path | None, seed: int,
                    cfg_scale: float | None, device: str, cuda_graph: bool | None, out: Path,
                    gif: Path | None = None) -> None:
    """``sample --prompt``: encode with the pipeline folder's text encoders, run the artifact, decode with
    its VAE (a video: a PNG strip of each video's frames, and ``gif`` if given)."""
    from l2c_compile.images import check_png_path
    from l2c_compile.io import hold_outputs
    from l2c_compile.runtime.devices import resolve_device

    if not prompts:
        raise L2CError("--diffusers DIR goes with --prompt TEXT (text-to-image artifacts)")
    if pipeline is None:
        raise L2CError("--prompt needs --diffusers DIR: the pipeline folder (PixArt, SD3, FLUX.1) whose text encoders, "
                       "tokenizers and VAE encode the prompt and decode the image")
    resolve_device(device)
    check_png_path(out)
    if gif is not None:
        from l2c_compile.io import check_output_file

        check_output_file(gif, "GIF")
        if gif.suffix.lower() != ".gif":
            raise L2CError(f"cannot write the GIF to {gif}: give a file name ending in .gif")
    with hold_outputs(out, gif):  # before any work: a second writer, an unwritable or full folder
        video = _draw_prompts(directory, prompts, negative_prompt, pipeline, seed, cfg_scale, device, cuda_graph,
                              out, gif)
    written = f"{out} and {gif}" if gif is not None else str(out)
    console.print(f"wrote {written} ({len(prompts)} {'videos' if video else 'samples'})")


def _draw_prompts(directory: Path, prompts: list[str], negative_prompt: str, pipeline: Path, seed: int,
                  cfg_scale: float | None, device: str, cuda_graph: bool | None, out: Path,
                  gif: Path | None = None) -> bool:
    """``sample --prompt`` once the outputs are locked: encode, draw, decode, write the grid (a
    video artifact: each video's frames side by side, one row per prompt, and the GIF); whether
    the artifact draws videos."""
    from l2c_compile import progress
    from l2c_compile.diffusers.load import load_pipeline
    from l2c_compile.images import make_grid, save_png
    from l2c_compile.runtime.artifact import load
    from l2c_compile.runtime.sampler_inputs import check_finite_output

    pipe = load_pipeline(pipeline)
    if getattr(pipe, "text_encoder", None) is None or not hasattr(pipe, "encode_prompt"):
        raise L2CError(f"{pipeline} has no text encoder: pass a text-conditioned pipeline folder (PixArt, SD3, "
                       "FLUX.1, Wan)")
    compiled = load(directory, device=device, cuda_graph=cuda_graph)
    print_fallbacks(compiled.record.fallbacks)
    check_sampler_memory(compiled, len(prompts), device)
    m = compiled.model
    if not hasattr(m, "prompt_condition"):
        raise L2CError("this artifact draws classes, not text: use --classes instead of --prompt")
    video = len(latent_shape(m)) == 4  # (C, F, H, W)
    if gif is not None and not video:
        raise L2CError("--gif is for video artifacts (Wan); this one draws images")
    want, have = compiled.record.model.get("diffusers_class"), type(pipe.transformer).__name__
    if want != have:
        raise L2CError(f"this artifact is a {want}; {pipeline} is a {type(pipe).__name__} with a {have}")
    if compiled.cfg and cfg_scale is None:
        cfg_scale = float(compiled.record.model.get("default_cfg_scale", 4.5))
    with console.status(f"encoding {len(prompts)} prompt(s)…"):
        y = m.prompt_condition(pipe, prompts, negative_prompt=negative_prompt, cfg=compiled.cfg, device=device)
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), *latent_shape(m), generator=gen).to(device)
    nfe = compiled.record.nfe
    with progress_bars(), progress.task(f"sampling {len(prompts)} images", nfe, "model calls"), \
            progress.counting_model_calls(compiled):
        x = compiled(noise, y, cfg_scale if compiled.cfg else None)
    check_finite_output(x, f"{out} was not written")
    if video:
        from l2c_compile.diffusers.wan import decode_latents
        from l2c_compile.images import save_gif, video_strip

        frames = decode_latents(pipe, x).float().cpu().clamp(-1, 1)  # (N, 3, F, H, W)
        scale = max(1, 128 // frames.shape[-1])
        save_png(video_strip(frames, scale=scale), out)
        if gif is not None:
            save_gif(frames, gif, scale=scale)
        return True
    with torch.no_grad():
        vae = pipe.vae  # SD3's VAE shifts its latents too (shift_factor); PixArt's has none
        latents = x.to(vae.device, vae.dtype) / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
        images = vae.decode(latents).sample.float().cpu()
    save_png(make_grid(images.clamp(-1, 1), scale=max(1, 128 // images.shape[-1])), out)
    return False
