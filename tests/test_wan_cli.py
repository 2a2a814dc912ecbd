"""``--diffusers DIR`` on a saved tiny ``WanPipeline`` folder: schedule, compile, verify, sample
(a frame strip PNG and a GIF) and data-free router training from prompts; bad folders and sizes
are one line, with nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
from l2c_compile.diffusers import compile_pipeline
from l2c_compile.schedule import Schedule
from tests.diffusers_helpers import tiny_wan_pipeline, wan_prompt_inputs

SIZE = ("--num-frames", 9, "--height", 32, "--width", 48)  # latents (4, 3, 4, 6)


def _cli(*args):
    from typer.testing import CliRunner

    from l2c_compile.cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = tiny_wan_pipeline()
    folder = tmp_path_factory.mktemp("saved") / "wan"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_saved_folder_loads_offline_with_its_layout_plan_and_size(saved):
    from l2c_compile.diffusers import load_diffusers, load_pipeline, pipeline_plan
    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.diffusers.wan import DiffusersWan
    from l2c_compile.families import family_of
    from l2c_compile.models.select import make_spec_plan, spec_layout

    pipe, folder = saved
    loaded = load_pipeline(folder)
    assert type(loaded).__name__ == "WanPipeline"
    for a, b in zip(loaded.transformer.state_dict().values(), pipe.transformer.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    size = {"num_frames": 9, "height": 32, "width": 48}
    spec = spec_for_folder(folder, **size)
    assert spec.size == size and spec.latent_shape == (4, 3, 4, 6)
    assert spec_for_folder(folder).size == {"num_frames": 81, "height": 480, "width": 832}  # the pipeline's
    model = load_diffusers(folder, size=spec.size)
    assert isinstance(model, DiffusersWan) and model.text_len == 512  # WanPipeline's max_sequence_length
    assert spec_layout(spec) == family_of(model).layout(model)
    assert make_spec_plan(spec, None, 6) == pipeline_plan(pipe.scheduler, 6)  # the folder's flow_shift 3 UniPC
    kw = dict(**wan_prompt_inputs(1), **size, num_inference_steps=3, output_type="latent")
    want = pipe(**kw, generator=torch.Generator().manual_seed(1)).frames
    got = compile_pipeline(loaded)(**kw, generator=torch.Generator().manual_seed(1)).frames
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


def test_cli_schedule_compile_verify_sample(tmp_path, saved):
    pipe, folder = saved
    sched, art, png, gif = tmp_path / "s.json", tmp_path / "art", tmp_path / "x.png", tmp_path / "x.gif"
    r = _cli("schedule", "heuristic", "--diffusers", folder, "--nfe", 6, "--kind", "random", "--fraction", 0.5,
             *SIZE, "-o", sched, "--format", "json")
    assert r.exit_code == 0, r.output
    doc = json.loads(sched.read_text())
    assert doc["sampler"] == "unipc-flow" and doc["kinds"] == ["attn", "cross", "mlp"]
    assert doc["source"]["sample_size"] == {"num_frames": 9, "height": 32, "width": 48}
    cached = compile_pipeline(pipe, Schedule.load(sched))  # a CLI schedule fits the pipeline's own plan
    kw = dict(**wan_prompt_inputs(1), height=32, width=48, num_frames=9, num_inference_steps=6, output_type="latent")
    got, want = (p(**kw, generator=torch.Generator().manual_seed(1)).frames for p in (cached, pipe))
    assert not np.allclose(got, want, atol=1e-5)  # and runs its cache
    r = _cli("compile", "--diffusers", folder, "--nfe", 6, "--schedule", sched, *SIZE, "-o", art, "--format", "json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["peak_cache_bytes_per_image"] > 0 and summary["peak_live_cache_entries"] > 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["model"]["diffusers_class"] == "WanTransformer3DModel"
    assert manifest["model"]["wan"]["num_frames"] == 9 and manifest["model"]["latent_shape"] == [4, 3, 4, 6]
    r = _cli("verify", art, "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["max_rel_error"] <= 1e-5
    r = _cli("sample", art, "--prompt", "a red cat", "--prompt", "the big house", "--diffusers", folder, "-o", png,
             "--gif", gif)
    assert r.exit_code == 0, r.output
    from PIL import Image

    strip, anim = Image.open(png), Image.open(gif)
    assert strip.format == "PNG" and anim.format == "GIF" and anim.n_frames == 9  # one GIF frame per video frame
    assert strip.size[0] > 9 * 48 > strip.size[1]  # 9 frames side by side, 2 rows (a margin between frames)
    # a schedule made for another size, refused before any weights load; nothing written
    r = _cli("compile", "--diffusers", folder, "--nfe", 6, "--schedule", sched, "--num-frames", 5, "--height", 32,
             "--width", 48, "-o", tmp_path / "a5")
    assert r.exit_code == 2 and "the schedule was made for 9 frames of 48×32, this compile is for 5 frames of 48×32" \
        in r.output and not (tmp_path / "a5").exists()


def test_cli_trains_a_router_from_prompts_then_imports_and_compiles_it(tmp_path, saved):
    from safetensors.torch import save_file

    from l2c_compile.diffusers.spec import spec_for_folder
    from l2c_compile.schedule.router_files import load_router

    _, folder = saved
    text = tmp_path / "prompts.txt"
    text.write_text("a red cat\n\nthe big dog\n", encoding="utf-8")
    inputs = wan_prompt_inputs(3, seed=5)
    pad = torch.zeros(3, 512 - inputs["prompt_embeds"].shape[1], inputs["prompt_embeds"].shape[2])
    embeds = tmp_path / "embeds.safetensors"  # (N, 512, D) as WanPipeline.encode_prompt returns them
    save_file({"prompt_embeds": torch.cat([inputs["prompt_embeds"], pad], 1),
               "negative_prompt_embeds": torch.cat([inputs["negative_prompt_embeds"], pad], 1)[:1].contiguous()},
              embeds)
    layout = spec_for_folder(folder).layout
    for prompts in (text, embeds):
        out = tmp_path / f"{prompts.stem}.safetensors"
        r = _cli("train", "--diffusers", folder, "--prompts", prompts, "--nfe", 6, "--steps", 3, "--batch-size", 2,
                 "--pool-size", 4, "--lam", 1.0, "--lr", 0.1, *SIZE, "-o", out, "--format", "json")
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["sampler"] == "unipc-flow" and summary["trained_rows"] and np.isfinite(summary["final_loss"])
        assert load_router(out).logits.shape == (6, layout.width)
    sched = tmp_path / "s.json"
    r = _cli("schedule", "import", tmp_path / "embeds.safetensors", "--diffusers", folder, "--nfe", 6,
             "--threshold", 0.5, *SIZE, "-o", sched)
    assert r.exit_code == 0, r.output
    r = _cli("compile", "--diffusers", folder, "--nfe", 6, "--schedule", sched, *SIZE, "-o", tmp_path / "a")
    assert r.exit_code == 0, r.output


def test_bad_folders_and_sizes_are_one_line_and_write_nothing(tmp_path, saved):
    _, folder = saved
    cases = [
        (("compile", "--diffusers", folder / "vae", "--nfe", 4), "holds a diffusers AutoencoderKLWan; supported: "),
        (("compile", "--diffusers", folder / "scheduler", "--nfe", 4), "is not a diffusers model folder"),
        (("compile", "--diffusers", folder, "--nfe", 4, "--num-frames", 10, "--height", 32, "--width", 48),
         "num_frames − 1 must be a multiple of 4 (as WanPipeline rounds it), got 10"),
        (("compile", "--diffusers", folder, "--nfe", 4, "--num-frames", 9, "--height", 40, "--width", 48),
         "height and width must be multiples of 16 and 16 pixels, got 40×48"),
        (("compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", 4, "--num-frames", 9),
         "--num-frames: a registry model's sample size is fixed"),
        (("schedule", "heuristic", "--diffusers", folder, "--nfe", 4, "--kind", "all", "--num-frames", 7),
         "num_frames − 1 must be a multiple of 4"),
    ]
    # Wan 2.2 folders: a second expert, or per-token timesteps (TI2V), refused before anything loads
    for name, extra in (("experts", {"transformer_2": ["diffusers", "WanTransformer3DModel"], "boundary_ratio": 0.875}),
                        ("ti2v", {"expand_timesteps": True})):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        index = json.loads((copy / "model_index.json").read_text())
        (copy / "model_index.json").write_text(json.dumps({**index, **extra}), encoding="utf-8")
        needle = "Wan 2.2's two experts" if name == "experts" else "expand_timesteps (Wan 2.2 TI2V"
        cases += [(("compile", "--diffusers", copy, "--nfe", 4), needle),
                  (("schedule", "heuristic", "--diffusers", copy, "--nfe", 4, "--kind", "all"), needle)]
    for i, (args, needle) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = _cli(*args, "-o", out)
        assert r.exit_code == 2, r.output
        lines = r.output.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], r.output
        assert not out.exists()
