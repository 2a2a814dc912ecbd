"""Router files: the official DiT and U-ViT layouts and l2c-compile's own safetensors format."""

from __future__ import annotations

import argparse
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.samplers import make_plan
from l2c_compile.schedule import Schedule, import_router
from l2c_compile.schedule.router_files import export_official, load_router, save_router

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared/data/routers"
FILES = {"DDIM20": "DDIM20_router.pt", "dpm20": "dpm20_router.pth", "dpm50": "dpm50_router.pth"}


def router_path(name: str) -> Path:
    path = ROUTERS / FILES[name]
    if not path.is_file():
        pytest.skip(f"released router {path} not available")
    return path


def one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(L2CError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_router_file_errors(tmp_path: Path) -> None:
    one_line_error(load_router, tmp_path / "missing.pt", match="not found")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 definitely not a checkpoint")
    one_line_error(
        load_router, garbage, match="garbage.pt: not a router file: it is unrecognised binary data"
    )
    whole, truncated = tmp_path / "whole.pt", tmp_path / "trunc.pt"
    torch.save({"routers": {f"{i}.prob": torch.zeros(56) for i in range(20)}}, whole)
    truncated.write_bytes(whole.read_bytes()[:2000])
    one_line_error(
        load_router,
        truncated,
        match="trunc.pt: not a router file: it is a zip archive torch cannot read",
    )
    unknown = tmp_path / "unknown.pt"
    torch.save({"weights": torch.zeros(3)}, unknown)
    one_line_error(load_router, unknown, match="unknown router format")
    gaps = tmp_path / "gaps.pth"
    torch.save({"0.prob": torch.zeros(4), "2.prob": torch.zeros(4)}, gaps)
    one_line_error(load_router, gaps, match="numbered 0..n-1")
    own = tmp_path / "own.safetensors"
    save_router(own, torch.zeros(2, 4), {"model": "tiny", "sampler": "ddim", "nfe": 2})
    (tmp_path / "cut.safetensors").write_bytes(own.read_bytes()[:-3])
    one_line_error(load_router, tmp_path / "cut.safetensors", match="corrupt safetensors")


def test_failed_writes_leave_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    one_line_error(
        save_router,
        out / "r.safetensors",
        torch.full((2, 4), math.nan),
        {"model": "m", "sampler": "s", "nfe": 2},
        match="NaN",
    )
    one_line_error(
        save_router,
        out / "r.safetensors",
        torch.zeros(2, 4),
        {"model": "m"},
        match="lacks sampler, nfe",
    )

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_official(out / "r.pt", torch.zeros(2, 4), "dit")
    assert not out.exists() or list(out.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Router file formats
# ---------------------------------------------------------------------------------------------


def test_official_formats_load_with_metadata() -> None:
    dit = load_router(router_path("DDIM20"))
    assert dit.logits.shape == (20, 56) and dit.logits.dtype == torch.float32
    assert dit.meta["format"] == "dit-official" and dit.meta["model"] == "DiT-XL/2"
    assert dit.meta["nfe"] == 20 and dit.meta["args"]["lr"] == 0.001
    uvit = load_router(router_path("dpm50"))
    assert uvit.logits.shape == (50, 58) and uvit.meta == {
        "format": "uvit-official",
        "family": "uvit",
    }
    # the Namespace is allowed only inside load_router, not left in torch's global allow-list
    assert argparse.Namespace not in torch.serialization.get_safe_globals()


@pytest.mark.parametrize(("name", "family"), [("DDIM20", "dit"), ("dpm20", "U-ViT")])
def test_official_export_round_trip(tmp_path: Path, name: str, family: str) -> None:
    logits = load_router(router_path(name)).logits
    out = tmp_path / "exported.pt"
    export_official(out, logits, family)
    back = load_router(out)
    assert torch.equal(back.logits, logits)
    raw = torch.load(out, weights_only=True)  # no extra safe globals needed
    probs = raw["routers"] if family == "dit" else raw
    assert list(probs) == [f"{i}.prob" for i in range(logits.shape[0])]
    assert isinstance(probs, OrderedDict)
    one_line_error(export_official, out, logits, "ditt", match="did you mean 'dit'")


def test_own_format_round_trip(tmp_path: Path) -> None:
    logits = torch.randn(20, 56, generator=torch.Generator().manual_seed(0))
    meta = {
        "model": "DiT-XL/2",
        "sampler": "ddim",
        "nfe": 20,
        "lambda": 5e-6,
        "steps": 4000,
        "recipe": {"lr": 0.001, "clamp": [-5, 5]},
        "note": "trained here",
    }
    path = tmp_path / "r.safetensors"
    save_router(path, logits, meta)
    back = load_router(path)
    assert torch.equal(back.logits, logits)
    # save_router adds what it knows about the target, so an import can check it (issue 12)
    target = {"family": "dit", "resolution": 256, "classes": 1000, "sublayers": ["attn", "mlp"]}
    assert back.meta == {**meta, **target, "format": "l2c-router", "version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.safetensors"]
    s = import_router(path, make_plan("ddim", 20), model="DiT-XL/2", depth=28, threshold=0.1)
    assert s == Schedule.from_router(
        logits, make_plan("ddim", 20), model="DiT-XL/2", depth=28, threshold=0.1, source=s.source
    )


def test_text_file_as_router_says_what_it_is(tmp_path: Path) -> None:
    text = tmp_path / "router.pt"
    text.write_text("hi\n")
    msg = one_line_error(load_router, text, match="router.pt: not a router file: it is a text file")
    assert "expected an official DiT/U-ViT router" in msg and "101" not in msg
