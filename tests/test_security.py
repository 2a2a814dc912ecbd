"""Hostile inputs (issue 27 §2): code in diffusers folders, links and special files, rich markup in
user text, tiny files that say huge sizes, and messages about refused pickles."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest
import torch

import l2c_compile
from l2c_compile.errors import L2CError
from tests.test_cli import assert_one_line_error, cli

DEEP = 100_000  # nesting that ends json.loads in a RecursionError


class _Code:
    """Pickles as a call to ``os.getcwd`` (harmless, and never allowed by a safe load)."""

    def __reduce__(self):
        return (os.getcwd, ())


def _refused(fn, *args, match: str) -> str:
    with pytest.raises(L2CError, match=match) as info:
        fn(*args)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture()
def artifact(tmp_path) -> Path:
    from l2c_compile.models.registry import build_model, get_spec, init_random
    from l2c_compile.samplers import make_plan
    from tests.helpers import random_schedule

    spec = get_spec("DiT-Tiny")
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = random_schedule(plan, 3, random.Random(0), p=0.7, model="DiT-Tiny")
    compiled = l2c_compile.compile(init_random(build_model(spec), 0), plan, sched, model_info=spec.to_dict())
    return compiled.save(tmp_path / "art")


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


# ------------------------------------------------------------------ diffusers folders naming code


def _pipeline(root: Path, **index: object) -> Path:
    """A DiTPipeline folder of configs only (nothing gets far enough to need weights)."""
    files = {
        "model_index.json": {"_class_name": "DiTPipeline", "scheduler": ["diffusers", "DDIMScheduler"],
                             "transformer": ["diffusers", "DiTTransformer2DModel"],
                             "vae": ["diffusers", "AutoencoderKL"], **index},
        "transformer/config.json": {"_class_name": "DiTTransformer2DModel", "num_attention_heads": 2,
                                    "attention_head_dim": 8, "in_channels": 4, "out_channels": 8,
                                    "num_layers": 2, "sample_size": 8, "patch_size": 2,
                                    "num_embeds_ada_norm": 1000},
        "scheduler/scheduler_config.json": {"_class_name": "DDIMScheduler"},
        "vae/config.json": {"_class_name": "AutoencoderKL"},
    }
    for name, document in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(document))
    return root


def _evil_code(path: Path) -> Path:
    """A module that leaves a mark when imported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("from pathlib import Path\nPath(__file__).with_name('RAN').write_text('x')\n"
                    "from diffusers import DDIMScheduler as EvilScheduler\n")
    return path.with_name("RAN")


def test_a_plain_pipeline_folder_passes_the_check(tmp_path) -> None:
    from l2c_compile.diffusers.load import model_folder

    root = _pipeline(tmp_path / "p")
    assert model_folder(root) == (root / "transformer", "DiTTransformer2DModel")


@pytest.mark.parametrize(
    ("craft", "match"),
    [
        (lambda r: _pipeline(r, scheduler=["evil", "EvilScheduler"]),
         r"component 'scheduler' comes from 'evil'"),
        (lambda r: _pipeline(r, scheduler=["diffusers", "EvilScheduler"]),
         r"component 'scheduler' names 'EvilScheduler', which is not a class of diffusers"),
        (lambda r: _pipeline(r, scheduler=["diffusers", "os"]), r"'os', which is not a class"),
        (lambda r: _pipeline(r, _class_name=["evil", "EvilPipeline"]), r"is not a diffusers pipeline class"),
        (lambda r: _pipeline(r, _class_name="DDIMScheduler"), r"'DDIMScheduler' is not a diffusers pipeline"),
        (lambda r: _pipeline(r, feature_extractor={"evil": 1}), r"component 'feature_extractor' must be"),
    ],
)
def test_model_index_names_only_library_classes(tmp_path, craft, match) -> None:
    from l2c_compile.diffusers import load_diffusers, load_pipeline

    root = craft(tmp_path / "p")
    ran = _evil_code(root / "scheduler" / "evil.py")
    _refused(load_diffusers, root, match=match)
    with pytest.raises(L2CError, match=r"refusing|supported pipelines|must be"):
        load_pipeline(root)
    assert not ran.exists()


@pytest.mark.parametrize(
    ("config", "match"),
    [({"_class_name": "DDIMScheduler", "auto_map": {"AutoConfig": "evil.Cfg"}}, r"'scheduler' names custom code"),
     ({"_class_name": "EvilScheduler"}, r"'scheduler' names class 'EvilScheduler'")],
)
def test_component_configs_name_no_code(tmp_path, config, match) -> None:
    from l2c_compile.diffusers import load_diffusers

    root = _pipeline(tmp_path / "p")
    (root / "scheduler/scheduler_config.json").write_text(json.dumps(config))
    _refused(load_diffusers, root, match=match)


@pytest.mark.parametrize("where", ["scheduler/evil.py", "deep/er/x.py", "transformer/cached.pyc"])
def test_no_python_file_anywhere_in_the_folder(tmp_path, where) -> None:
    from l2c_compile.diffusers import load_diffusers, load_pipeline

    root = _pipeline(tmp_path / "p")
    ran = _evil_code(root / where)
    _refused(load_pipeline, root, match=f"holds Python code \\({where}\\)")
    _refused(load_diffusers, root / "transformer" if where.startswith("transformer") else root,
             match="holds Python code")
    assert not ran.exists()


def test_vae_folders_are_checked_too(tmp_path) -> None:
    from l2c_compile.images import load_vae_decoder
    from l2c_compile.router.data import load_vae

    root = _pipeline(tmp_path / "p") / "vae"
    ran = _evil_code(root / "evil.py")
    for fn in (load_vae, load_vae_decoder):
        _refused(fn, root, match=r"holds Python code \(evil\.py\)")
    (root / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "auto_map": {"x": "evil.X"}}))
    _refused(load_vae, root, match="names custom code")
    assert not ran.exists()


def test_cli_refuses_a_folder_with_custom_components_before_loading(tmp_path) -> None:
    root = _pipeline(tmp_path / "p", scheduler=["evil", "EvilScheduler"])
    ran = _evil_code(root / "scheduler" / "evil.py")
    (tmp_path / "p.txt").write_text("a cat\n")
    for args in (["train", "--diffusers", root, "--prompts", tmp_path / "p.txt", "--nfe", "4",
                  "-o", tmp_path / "r.safetensors"],
                 ["compile", "--diffusers", root, "--nfe", "4", "-o", tmp_path / "art"],
                 ["schedule", "heuristic", "--diffusers", root, "--nfe", "4", "--kind", "all",
                  "-o", tmp_path / "s.json"]):
        assert_one_line_error(cli(*args), "component 'scheduler' comes from 'evil'")
    assert not ran.exists()


def test_a_huge_diffusers_config_is_refused_before_building(tmp_path) -> None:
    from l2c_compile.diffusers import load_diffusers

    root = _pipeline(tmp_path / "p")
    config = json.loads((root / "transformer/config.json").read_text())
    (root / "transformer/config.json").write_text(json.dumps({**config, "attention_head_dim": 2**40}))
    _refused(load_diffusers, root, match=r"attention_head_dim = 1099511627776 is out of range")
    (root / "transformer/config.json").write_text(json.dumps({**config, "num_attention_heads": 2048,
                                                               "attention_head_dim": 2048}))
    _refused(load_diffusers, root, match=r"parameters .* refusing to build it")


# ------------------------------------------------------------------ links and special files


def test_load_refuses_a_weights_link_out_of_the_folder(artifact, tmp_path) -> None:
    from l2c_compile.runtime.manifest import sha256_file

    other = tmp_path / "elsewhere.safetensors"
    (artifact / "weights.safetensors").rename(other)
    (artifact / "weights.safetensors").symlink_to(other)
    _edit_manifest(artifact, lambda d: d["files"].update({"weights.safetensors": sha256_file(other)}))
    _refused(l2c_compile.load, artifact, match=r"weights\.safetensors .* is a symbolic link")


def test_load_refuses_a_linked_manifest_and_code(artifact, tmp_path) -> None:
    for name in ("manifest.json", "sampler.py"):
        outside = tmp_path / name
        (artifact / name).rename(outside)
        (artifact / name).symlink_to(outside)
        _refused(l2c_compile.load, artifact, match=f"{name} .* is a symbolic link")
        (artifact / name).unlink()
        outside.rename(artifact / name)
    assert l2c_compile.load(artifact).info["nfe"] == 4  # put back, it loads


def test_a_linked_artifact_folder_loads(artifact, tmp_path) -> None:
    (tmp_path / "latest").symlink_to(artifact)  # the folder you name may be a link; its files may not
    assert l2c_compile.load(tmp_path / "latest").info["nfe"] == 4


def test_fifos_are_refused_without_blocking(artifact, tmp_path) -> None:
    from l2c_compile.models.registry import build_model, load_checkpoint
    from l2c_compile.router.checkpoint import read_checkpoint
    from l2c_compile.schedule import Schedule
    from l2c_compile.schedule.router_files import load_router

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for fn in (Schedule.load, load_router, read_checkpoint,
               lambda p: load_checkpoint(build_model("DiT-Tiny"), p)):
        _refused(fn, fifo, match=r"is a fifo \(named pipe\); refusing to read it")
    (artifact / "weights.safetensors").unlink()
    os.mkfifo(artifact / "weights.safetensors")
    _refused(l2c_compile.load, artifact, match=r"weights\.safetensors .* is a fifo")
    assert_one_line_error(cli("schedule", "show", fifo), "is a fifo")


# ------------------------------------------------------------------ rich markup in user text


def test_markup_in_user_text_is_printed_literally(tmp_path) -> None:
    from l2c_compile.schedule.router_files import save_router

    router = tmp_path / "[red]r.safetensors"
    save_router(router, torch.zeros(4, 6), {"model": "[/red]", "sampler": "ddim", "nfe": 4})
    cases = [
        (["schedule", "show", "[/x].json"], "[/x].json"),
        (["schedule", "show", tmp_path / "[red]y.json"], "[red]y.json"),
        (["verify", "a[/b]"], "a[/b]"),
        (["sample", "[bold]art", "-o", tmp_path / "g.png"], "[bold]art"),
        (["compile", "-m", "DiT[/i]", "--init", "random", "--nfe", "4", "-o", tmp_path / "a"], "'DiT[/i]'"),
        (["schedule", "import", router, "-m", "DiT-Tiny", "--nfe", "4", "-o", tmp_path / "s.json"], "[/red]"),
    ]
    for args, literal in cases:
        line = assert_one_line_error(cli(*args), literal)
        assert "MarkupError" not in line


def test_tables_print_user_text_unparsed(tmp_path) -> None:
    from l2c_compile.models.registry import get_spec
    from l2c_compile.samplers import make_plan
    from l2c_compile.schedule import Schedule

    spec = get_spec("DiT-Tiny")
    plan = make_plan("ddim", 4, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    sched = Schedule.all_compute("[/red]", 3, plan)
    sched.save(tmp_path / "[red]s.json")
    r = cli("schedule", "show", tmp_path / "[red]s.json")
    assert r.exit_code == 0, r.stderr
    assert "[/red]" in r.stdout


# ------------------------------------------------------------------ tiny files, huge sizes


def _deep(n: int = DEEP) -> str:
    return "[" * n + "]" * n


def test_a_huge_depth_or_nfe_in_a_schedule_is_refused_at_once(tmp_path) -> None:
    from l2c_compile.schedule import Schedule

    for key, value in (("depth", 10**7), ("nfe", 10**7)):
        path = tmp_path / f"{key}.json"
        path.write_text(json.dumps({"format": "l2c-schedule", "version": 1, "model": "m", "depth": 3,
                                    "sampler": "ddim", "nfe": 1, "threshold": None, "source": {},
                                    "calls": [{"index": 0, "timestep": 1.0, "role": "full",
                                               "router_index": None, "reuse_attn": [], "reuse_mlp": []}],
                                    key: value}))
        start = time.perf_counter()
        _refused(Schedule.load, path, match=f"{key} must be a positive integer \\(at most")
        assert time.perf_counter() - start < 5


def test_a_deep_json_document_is_one_line(tmp_path, artifact) -> None:
    from l2c_compile.schedule import Schedule
    from l2c_compile.schedule.router_files import load_router, save_router

    sched = tmp_path / "s.json"
    sched.write_text('{"source": ' + _deep() + "}")
    _refused(Schedule.load, sched, match="nests JSON deeper than 64 levels")
    (artifact / "manifest.json").write_text(_deep())
    _refused(l2c_compile.load, artifact, match="nests JSON deeper than 64 levels")
    router = tmp_path / "r.safetensors"
    save_router(router, torch.zeros(4, 6), {"model": "DiT-Tiny", "sampler": "ddim", "nfe": 4, "note": "x"})
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(router), framework="pt") as fh:
        meta, logits = fh.metadata(), fh.get_tensor("logits")
    save_file({"logits": logits}, str(router), metadata={**meta, "note": _deep()})
    _refused(load_router, router, match=r"r\.safetensors: router metadata nests JSON deeper")
    assert_one_line_error(cli("schedule", "show", sched), "nests JSON deeper")


@pytest.mark.parametrize(
    ("edit", "match"),
    [({"hidden_size": 2**40}, r"hidden_size = 1099511627776 is out of range"),
     ({"depth": 10**7}, r"depth = 10000000 is out of range"),
     ({"depth": 2000}, r"depth 2000 is not an integer in 1\.\.1024"),
     ({"hidden_size": 32768, "num_heads": 2, "depth": 1000}, r"parameters .* refusing to build it")],
)
def test_an_unregistered_model_of_absurd_size_is_refused(artifact, edit, match) -> None:
    def rename(d):
        d["model"]["name"] = "My-DiT"
        d["model"]["kwargs"].update(edit)

    _edit_manifest(artifact, rename)
    start = time.perf_counter()
    _refused(l2c_compile.load, artifact, match=match)
    assert time.perf_counter() - start < 5


def test_a_huge_manifest_nfe_is_refused_at_once(artifact) -> None:
    _edit_manifest(artifact, lambda d: d["sampler"].update(nfe=10**7))
    start = time.perf_counter()
    _refused(l2c_compile.load, artifact, match="cannot take 10000000 model calls")
    assert time.perf_counter() - start < 5


# ------------------------------------------------------------------ refused pickles, said plainly


def test_a_pickle_with_code_is_refused_not_called_corrupt(tmp_path) -> None:
    from l2c_compile.models.registry import build_model, load_checkpoint
    from l2c_compile.schedule.router_files import load_router

    evil = tmp_path / "evil.pt"
    torch.save({"routers": {"0.prob": torch.zeros(4)}, "x": _Code()}, evil)
    for fn in (load_router, lambda p: load_checkpoint(build_model("DiT-Tiny"), p)):
        message = _refused(fn, evil, match=r"refused: it pickles a posix\.getcwd object")
        assert "corrupt" not in message and "weights_only=False" not in message
    cut = tmp_path / "cut.pt"
    cut.write_bytes(evil.read_bytes()[:100])
    _refused(load_router, cut, match="truncated or corrupt")


def test_resume_refuses_an_unsafe_checkpoint_before_drawing_data(tmp_path, monkeypatch) -> None:
    import l2c_compile.router as router_pkg

    def no_draw(*args, **kwargs):
        raise AssertionError("the data pool was drawn before the checkpoint was checked")

    monkeypatch.setattr(router_pkg, "open_data", no_draw)
    out = tmp_path / "r.safetensors"
    torch.save({"format": "l2c-router-checkpoint", "version": 1, "x": _Code()}, tmp_path / "r.safetensors.ckpt")
    args = ["train", "-m", "DiT-Tiny", "--init", "random", "--nfe", "4", "--steps", "1", "--resume", "-o", out]
    line = assert_one_line_error(cli(*args), "r.safetensors.ckpt", "refused: it pickles a posix.getcwd")
    assert "weights_only" not in line.replace("safe load (weights_only)", "")
    assert "False" not in line
    (tmp_path / "r.safetensors.ckpt").unlink()
    assert_one_line_error(cli(*args), "nothing to resume")
