"""Every fact a router file carries is checked against the target (issue 12, item 1).

The released DiT routers record their model (DiT-XL/2, 256 px, 1000 classes) and come from a
DDIM trainer; the U-ViT ones record nothing but their layout. A mismatch in any recorded fact is
one L2CError; the facts a file lacks are listed as unchecked in the schedule's provenance and
shown by `schedule show`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from l2c_compile.cli.main import app
from l2c_compile.errors import L2CError
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule, import_router
from l2c_compile.schedule.router_files import (
    FACTS,
    export_official,
    load_router,
    router_facts,
    save_router,
)

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared/data/routers"
runner = CliRunner()
needs_routers = pytest.mark.skipif(not ROUTERS.is_dir(), reason="released routers not present")


def _import(*args: str, out: Path) -> object:
    return runner.invoke(app, ["schedule", "import", *args, "-o", str(out)])


def _refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not out.exists()


@needs_routers
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["--model", "DiT-XL/2", "--nfe", "20", "--sampler", "dpm-solver-2"],
            ["trained for sampler ddim but the plan is dpm-solver-2"],
        ),
        (
            ["--model", "DiT-XL/2-512", "--nfe", "20"],
            ["trained at resolution 256 px but the model draws 512 px"],
        ),
        (
            ["--model", "DiT-XL/2", "--nfe", "50"],
            ["router has 20 steps but the sampler plan has 50"],
        ),
        (["--model", "DiT-S/2", "--nfe", "20"], ["router has 56 entries per step", "12 blocks"]),
    ],
)
def test_released_dit_router_on_another_target_is_refused(tmp_path, args, needles) -> None:
    out = tmp_path / "x.json"
    _refused(_import(str(ROUTERS / "DDIM20_router.pt"), *args, out=out), out, *needles)


@needs_routers
def test_released_routers_record_what_was_checked(tmp_path) -> None:
    out = tmp_path / "d.json"
    assert (
        _import(
            str(ROUTERS / "DDIM20_router.pt"), "-m", "DiT-XL/2", "--nfe", "20", out=out
        ).exit_code
        == 0
    )
    src = Schedule.load(out).source
    assert src["format"] == "dit-official"
    assert src["checked"] == [
        "depth",
        "nfe",
        "sublayers",
        "family",
        "model",
        "resolution",
        "classes",
        "sampler",
    ]
    assert src["unchecked"] == ["sampler_options"]
    out = tmp_path / "u.json"
    assert (
        _import(
            str(ROUTERS / "dpm20_router.pth"), "-m", "U-ViT-H/2", "--nfe", "20", out=out
        ).exit_code
        == 0
    )
    src = Schedule.load(out).source
    assert src["checked"] == ["depth", "nfe", "sublayers", "family"]
    assert src["unchecked"] == ["model", "resolution", "classes", "sampler", "sampler_options"]
    shown = runner.invoke(app, ["schedule", "show", str(out)])
    assert shown.exit_code == 0
    text = " ".join(shown.stdout.split())
    assert "router facts checked │ depth, nfe, sublayers, family" in text
    assert "unchecked (not in the file)" in text and "sampler_options" in text
    as_json = json.loads(
        runner.invoke(app, ["schedule", "show", str(out), "--format", "json"]).stdout
    )
    assert as_json["source"]["unchecked"][0] == "model"


def test_official_uvit_layout_on_a_dit_is_refused(tmp_path) -> None:
    path = tmp_path / "u.pth"
    export_official(path, torch.zeros(20, 56), "uvit")  # the right size for DiT-XL/2
    out = tmp_path / "x.json"
    _refused(
        _import(str(path), "-m", "DiT-XL/2", "--nfe", "20", out=out),
        out,
        "router is a uvit router but the model family is dit",
    )


def test_official_dit_layout_without_args_checks_only_its_family(tmp_path) -> None:
    path = tmp_path / "d.pt"
    export_official(path, torch.zeros(6, 6), "dit")
    plan = make_plan("ddim", 6)
    sched = import_router(path, plan, model="DiT-Tiny", depth=3, threshold=0.1)
    assert sched.source["checked"] == ["depth", "nfe", "sublayers", "family"]
    assert "sampler" in sched.source["unchecked"] and "model" in sched.source["unchecked"]


def test_own_router_records_and_checks_every_fact(tmp_path) -> None:
    path = tmp_path / "r.safetensors"
    plan = make_plan("dpm-solver-2", 6, noise_schedule="linear", time_input="discrete")
    save_router(
        path,
        torch.zeros(6, 6),
        {"model": "DiT-Tiny", "sampler": "dpm-solver-2", "nfe": 6, "options": dict(plan.options)},
    )
    facts = router_facts(load_router(path))
    assert set(facts) == set(FACTS)
    assert facts["family"] == "dit" and facts["sublayers"] == ["attn", "mlp"]
    sched = import_router(path, plan, model="DiT-Tiny", depth=3, threshold=0.5)
    assert sched.source["checked"] == list(FACTS) and sched.source["unchecked"] == []
    unshifted = make_plan(
        "dpm-solver-2", 6, noise_schedule="linear", time_input="discrete", shifted=False
    )
    with pytest.raises(
        L2CError, match=r"sampler option shifted=True but the plan has shifted=False"
    ):
        import_router(path, unshifted, model="DiT-Tiny", depth=3, threshold=0.5)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"classes": 1000}, r"router trained for 1000 classes but the model has 10 classes"),
        ({"resolution": 64}, r"router trained at resolution 64 px but the model draws 16 px"),
        ({"family": "uvit"}, r"router is a uvit router but the model family is dit"),
        ({"sublayers": ["attn"]}, r"router covers sublayers \['attn'\]"),
        ({"sampler": "dpm-solver-2"}, r"trained for sampler dpm-solver-2 but the plan is ddim"),
    ],
)
def test_each_recorded_fact_is_checked(tmp_path, meta, match) -> None:
    path = tmp_path / "r.safetensors"
    save_router(path, torch.zeros(4, 6), {"model": "DiT-Tiny", "sampler": "ddim", "nfe": 4, **meta})
    with pytest.raises(L2CError, match=match):
        import_router(path, make_plan("ddim", 4), model="DiT-Tiny", depth=3, threshold=0.5)
