"""Checkpoint I/O: round trips, upstream layouts, and every bad input as a one-line L2CError."""

from __future__ import annotations

import argparse
import fractions

import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.models import build_model, get_spec, init_random, load_checkpoint, save_checkpoint

TINY = ["DiT-Tiny", "U-ViT-Tiny"]


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    return init_random(build_model(name), seed)


def inputs(name: str, n: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    spec = get_spec(name)
    x = torch.randn(n, *spec.latent_shape, generator=torch.Generator().manual_seed(0))
    return x, torch.linspace(900.0, 10.0, n), torch.arange(n) % spec.num_classes


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", TINY)
def test_safetensors_round_trip(name: str, tmp_path) -> None:
    src = tiny(name, seed=3)
    path = tmp_path / "w.safetensors"
    save_checkpoint(src, path)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left
    dst = build_model(name)
    load_checkpoint(dst, path)
    assert_same_weights(src, dst)
    x, t, y = inputs(name)
    torch.testing.assert_close(dst(x, t, y), src(x, t, y), rtol=0, atol=0)


def test_torch_ema_checkpoint_with_training_args(tmp_path) -> None:
    src, other = tiny("DiT-Tiny", seed=4), tiny("DiT-Tiny", seed=5)
    path = tmp_path / "0100000.pt"  # the layout of an upstream DiT training checkpoint
    torch.save(
        {
            "model": other.state_dict(),
            "ema": src.state_dict(),
            "opt": {},
            "args": argparse.Namespace(model="DiT-Tiny"),
        },
        path,
    )
    dst = build_model("DiT-Tiny")
    load_checkpoint(dst, path)
    assert_same_weights(src, dst)  # EMA weights win over the raw ones


@pytest.mark.parametrize(
    "wrap",
    [lambda sd: sd, lambda sd: {"model": sd}, lambda sd: {f"module.{k}": v for k, v in sd.items()}],
)
def test_torch_checkpoint_layouts(wrap, tmp_path) -> None:
    src = tiny("U-ViT-Tiny", seed=6)
    torch.save(wrap(src.state_dict()), tmp_path / "w.pth")
    dst = build_model("U-ViT-Tiny")
    load_checkpoint(dst, tmp_path / "w.pth")
    assert_same_weights(src, dst)


def test_load_into_meta_model_materialises_it(tmp_path) -> None:
    src = tiny("DiT-Tiny", seed=7)
    save_checkpoint(src, tmp_path / "w.safetensors")
    dst = build_model("DiT-Tiny", device="meta")
    load_checkpoint(dst, tmp_path / "w.safetensors")
    assert_same_weights(src, dst)
    assert dst.pos_embed.requires_grad is False
    x, t, y = inputs("DiT-Tiny")
    torch.testing.assert_close(dst(x, t, y), src(x, t, y), rtol=0, atol=0)


def one_line_error(model: torch.nn.Module, path, match: str) -> str:
    with pytest.raises(L2CError, match=match) as info:
        load_checkpoint(model, path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_checkpoint(tmp_path) -> None:
    one_line_error(build_model("DiT-Tiny"), tmp_path / "nope.pt", "not found")
    one_line_error(build_model("DiT-Tiny"), tmp_path, "not a file")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".bin"])
def test_corrupt_checkpoint(suffix: str, tmp_path) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(b"\x00\x01 definitely not weights \xff" * 40)
    one_line_error(
        build_model("DiT-Tiny"), path, "cannot be loaded: it is unrecognised binary data"
    )


@pytest.mark.parametrize("saver", ["torch", "safetensors"])
def test_truncated_checkpoint(saver: str, tmp_path) -> None:
    model = tiny("DiT-Tiny")
    path = tmp_path / ("w.pt" if saver == "torch" else "w.safetensors")
    if saver == "torch":
        torch.save(model.state_dict(), path)
    else:
        save_checkpoint(model, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    one_line_error(
        build_model("DiT-Tiny"),
        path,
        "cannot be loaded: it is a (zip archive torch cannot read|corrupt or truncated safetensors)",
    )


def test_unsafe_pickle_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    # Any class outside the weights_only allow-list must be refused, never executed.
    torch.save({"ema": tiny("DiT-Tiny").state_dict(), "extra": fractions.Fraction(1, 3)}, path)
    one_line_error(build_model("DiT-Tiny"), path, "pickles a fractions.Fraction object")


def test_wrong_keys(tmp_path) -> None:
    sd = tiny("DiT-Tiny").state_dict()
    del sd["blocks.2.mlp.fc2.weight"], sd["blocks.2.mlp.fc2.bias"]
    sd["blocks.9.attn.qkv.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pt")
    model = build_model("DiT-Tiny")
    model.model_name = "DiT-Tiny"
    msg = one_line_error(model, tmp_path / "w.pt", "does not fit DiT-Tiny")
    assert "2 missing keys (blocks.2.mlp.fc2.weight, blocks.2.mlp.fc2.bias)" in msg
    assert "1 unexpected (blocks.9.attn.qkv.weight)" in msg


def test_wrong_shape(tmp_path) -> None:
    sd = tiny("DiT-Tiny").state_dict()
    sd["final_layer.linear.weight"] = torch.zeros(16, 64)
    save_checkpoint_dict(sd, tmp_path / "w.safetensors")
    msg = one_line_error(build_model("DiT-Tiny"), tmp_path / "w.safetensors", "wrong shape")
    assert "final_layer.linear.weight: [16, 64] in the checkpoint, [32, 64] in the model" in msg
    assert "0 missing keys" in msg


def save_checkpoint_dict(sd: dict[str, torch.Tensor], path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


def test_checkpoint_of_another_model(tmp_path) -> None:
    save_checkpoint(tiny("DiT-Tiny"), tmp_path / "dit.safetensors")
    msg = one_line_error(
        build_model("U-ViT-Tiny"), tmp_path / "dit.safetensors", "does not fit U-ViT-Tiny"
    )
    assert "missing keys" in msg and "unexpected" in msg


def test_non_state_dict_checkpoint(tmp_path) -> None:
    torch.save({"step": 3, "lr": 0.1}, tmp_path / "w.pt")
    one_line_error(build_model("DiT-Tiny"), tmp_path / "w.pt", "non-tensor entries")
    torch.save([torch.zeros(1)], tmp_path / "l.pt")
    one_line_error(build_model("DiT-Tiny"), tmp_path / "l.pt", "holds no state dict")


def test_save_refuses_meta_model(tmp_path) -> None:
    with pytest.raises(L2CError, match="meta"):
        save_checkpoint(build_model("DiT-Tiny", device="meta"), tmp_path / "w.safetensors")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hi\n", "it is a text file (starting 'hi')"),
        (b"", "it is an empty file"),
        (b'{"weights": [1, 2]}', "it is a JSON document"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "it is a PNG image"),
        (bytes(range(256)) * 4, "it is unrecognised binary data (first bytes 00 01 02"),
    ],
)
def test_wrong_kind_of_file_says_what_it_is(tmp_path, content: bytes, says: str) -> None:
    """Issue 12, item 5: no torch text cut off at '…', no bare '101': what it is, what was expected."""
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    msg = one_line_error(build_model("DiT-Tiny"), path, "cannot be loaded")
    assert says in msg and "expected a torch .pt/.pth checkpoint or a .safetensors file" in msg
    assert "…" not in msg and "weights_only" not in msg
