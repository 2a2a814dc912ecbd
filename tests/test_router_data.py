"""Router training data: tensors files, image folders (with a tiny VAE), the data-free pool."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.models.registry import build_model, get_spec, init_random
from l2c_compile.router import draw_self_data, load_tensors, open_data
from l2c_compile.samplers import make_plan


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The tiny models are latency-bound: one thread avoids contention on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


def test_tensor_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    spec = get_spec("DiT-Tiny")  # pixel space, 4×16×16
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(5, 4, 16, 16, generator=g)
    save_file({"latents": lat, "labels": torch.arange(5)}, str(tmp_path / "a.safetensors"))
    data = load_tensors(tmp_path / "a.safetensors", spec)
    x, y = data.batch(torch.tensor([4, 0]), torch.Generator())
    assert torch.equal(x, lat[[4, 0]]) and y.tolist() == [4, 0]

    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 4), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "b.npz", images=images, labels=np.array([1, 2, 3]))
    x, _ = load_tensors(tmp_path / "b.npz", spec).batch(torch.tensor([1]), torch.Generator())
    assert torch.allclose(x[0], torch.from_numpy(images[1]).permute(2, 0, 1).float() / 127.5 - 1)

    np.save(tmp_path / "c.npy", lat.numpy())
    with pytest.raises(L2CError, match=r"c\.labels\.npy") as info:
        load_tensors(tmp_path / "c.npy", spec)
    one_line(info)
    np.save(tmp_path / "c.labels.npy", np.arange(5))
    assert len(load_tensors(tmp_path / "c.npy", spec)) == 5

    bad = {
        "shape": (
            {"latents": torch.randn(2, 3, 16, 16), "labels": torch.zeros(2, dtype=torch.long)},
            "takes \\[4, 16, 16\\]",
        ),
        "labels": (
            {"latents": torch.randn(2, 4, 16, 16), "labels": torch.tensor([0, 10])},
            "labels must lie in 0..9",
        ),
        "count": (
            {"latents": torch.randn(2, 4, 16, 16), "labels": torch.zeros(3, dtype=torch.long)},
            "2 samples but 3 labels",
        ),
        "nolabels": ({"latents": torch.randn(2, 4, 16, 16)}, "no 'labels'"),
    }
    for name, (tensors, match) in bad.items():
        save_file(tensors, str(tmp_path / f"{name}.safetensors"))
        with pytest.raises(L2CError, match=match) as info:
            load_tensors(tmp_path / f"{name}.safetensors", spec)
        one_line(info)
    latent_spec = get_spec("DiT-S/8")
    save_file(
        {"images": torch.zeros(2, 3, 256, 256), "labels": torch.zeros(2, dtype=torch.long)},
        str(tmp_path / "img.safetensors"),
    )
    with pytest.raises(L2CError, match="needs --vae"):
        load_tensors(tmp_path / "img.safetensors", latent_spec)
    with pytest.raises(L2CError, match="data not found"):
        open_data(tmp_path / "missing", spec)


def _write_image_folder(root: Path, sizes: list[tuple[int, int]]) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_with_a_tiny_vae(tmp_path: Path) -> None:
    diffusers = pytest.importorskip("diffusers")
    from l2c_compile.router import ImageFolderData, load_vae

    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=32,
    )
    vae.save_pretrained(tmp_path / "vae")
    _write_image_folder(tmp_path / "imgs", [(40, 32), (32, 70), (64, 64)])
    latent_spec = dataclasses.replace(get_spec("DiT-Tiny"), pixel_space=False)  # 4×16×16 latents
    encoder = load_vae(tmp_path / "vae")
    data = ImageFolderData(tmp_path / "imgs", latent_spec, vae=encoder)
    assert len(data) == 3 and data.size == 32 and data.labels.tolist() == [0, 0, 1]
    x, y = data.batch(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(5))
    again, _ = data.batch(torch.tensor([0, 1, 2]), torch.Generator().manual_seed(5))
    assert x.shape == (3, 4, 16, 16) and torch.equal(x, again) and y.tolist() == [0, 0, 1]
    with pytest.raises(L2CError, match="4-channel inputs but image folders hold RGB"):
        ImageFolderData(tmp_path / "imgs", get_spec("DiT-Tiny"))
    with pytest.raises(L2CError, match="needs --vae"):
        ImageFolderData(tmp_path / "imgs", latent_spec)


def test_self_data_is_seeded() -> None:
    dit = init_random(build_model("DiT-Tiny"), 0)
    spec, plan = get_spec("DiT-Tiny"), make_plan("ddim", 2)
    a = draw_self_data(dit, plan, spec, size=3, seed=4)
    b = draw_self_data(dit, plan, spec, size=3, seed=4)
    c = draw_self_data(dit, plan, spec, size=3, seed=5)
    assert a.items.shape == (3, 4, 16, 16) and torch.equal(a.items, b.items)
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.items, c.items)
    assert int(a.labels.max()) < 10
