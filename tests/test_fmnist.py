"""Fashion-MNIST: the IDX reader, the training script, and the shipped reference models."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from l2c_compile.errors import L2CError
from l2c_compile.fmnist import data, specs, train_model
from l2c_compile.fmnist.classifier import CLASSIFIER_PATH, STATS_PATH
from l2c_compile.models.registry import build_model, load_checkpoint
from l2c_compile.samplers import make_plan

needs_data = pytest.mark.skipif(
    not data.available(), reason="dataset-fashion-mnist is not installed"
)
MODEL_NAMES = sorted(specs.SPEC_FIELDS)


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trips(tmp_path: Path, compressed: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.idx.gz" if compressed else "x.idx")
    raw = _idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    np.testing.assert_array_equal(data.read_idx(path), array)


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(L2CError, match="truncated"):
        data.read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(L2CError, match="not an unsigned-byte IDX"):
        data.read_idx(tmp_path / "png")


def test_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(L2CError, match="apt-get install dataset-fashion-mnist"):
        data.load_split("train", folder=tmp_path)
    with pytest.raises(L2CError, match="train or test"):
        data.load_split("validation", folder=tmp_path)
    assert not data.available(tmp_path)


def test_to_model_range_pads_with_background() -> None:
    raw = np.full((2, 28, 28), 255, dtype=np.uint8)
    raw[1] = 0
    x = data.to_model_range(raw)
    assert x.shape == (2, 1, 32, 32) and x.dtype == torch.float32
    assert torch.all(x[0, 0, 2:30, 2:30] == 1.0) and torch.all(x[1] == -1.0)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(x[0, 0][border] == -1.0)


@needs_data
def test_test_split_shapes_and_range() -> None:
    images, labels = data.load_split("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    x, y = data.load_tensors("test")
    assert x.shape == (10000, 1, 32, 32) and y.dtype == torch.int64
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.all(x[:, :, :2] == -1.0) and torch.all(x[:, :, :, -2:] == -1.0)


# ----------------------------------------------------------------------------- specs and training


def test_specs_follow_their_family_conventions() -> None:
    table = specs.fmnist_specs()
    dit, uvit = table["DiT-FMNIST"], table["U-ViT-FMNIST"]
    assert (dit.time_input, dit.default_sampler) == ("discrete", "ddim")
    assert (uvit.time_input, uvit.default_sampler) == ("continuous", "dpm-solver-2")
    # Pixel space without x0 clipping: the terminal ᾱ must not be tiny (see specs.py).
    assert dit.noise_schedule == uvit.noise_schedule == "scaled_linear"
    for spec in (dit, uvit):
        assert spec.latent_shape == (1, 32, 32) and spec.pixel_space and spec.num_classes == 10
        assert spec.patch == 2 and spec.tokens - (0 if spec.family == "dit" else 2) == 256
    assert len(build_model(uvit).transformer_blocks()) % 2 == 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_training_timesteps_match_the_samplers(name: str) -> None:
    spec = specs.fmnist_specs()[name]
    plan = make_plan("ddim", 10, noise_schedule=spec.noise_schedule, time_input=spec.time_input)
    # The first DDIM call is at training step 999 and the last at 0: training must feed the
    # network the same value for those steps as sampling does.
    first, last = plan.calls[0].timestep, plan.calls[-1].timestep
    assert train_model.model_timesteps(torch.tensor([999, 0]), spec.time_input).tolist() == [
        first,
        last,
    ]


def test_ema_update_and_warmup() -> None:
    assert train_model.ema_decay(0, 0.999) == pytest.approx(0.1)
    assert train_model.ema_decay(10**6, 0.999) == 0.999
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.75 * a.weight.detach() + 0.25 * b.weight.detach()
    train_model.update_ema(a, b, 0.75)
    torch.testing.assert_close(a.weight.detach(), expected)


def test_training_runs_checkpoints_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(0)
    fake = (
        torch.rand(16, 1, 32, 32, generator=gen) * 2 - 1,
        torch.randint(0, 10, (16,), generator=gen),
    )
    monkeypatch.setattr(train_model, "load_tensors", lambda split: fake)
    weights, card = tmp_path / "w.safetensors", tmp_path / "card.md"
    argv = [
        "--model",
        "DiT-FMNIST",
        "--out",
        str(tmp_path / "run"),
        "--batch",
        "4",
        "--log-every",
        "1",
        "--weights",
        str(weights),
        "--card",
        str(card),
    ]
    info = train_model.train(train_model.parse_args([*argv, "--max-steps", "2"]))
    assert info["step"] == 2 and np.isfinite(info["final_loss"])
    info = train_model.train(train_model.parse_args([*argv, "--max-steps", "3"]))
    assert info["step"] == 3  # resumed from step 2, not restarted
    state = train_model.load_state(tmp_path / "run" / train_model.STATE_FILE)
    assert state["step"] == 3 and len(state["losses"]) == 3
    model = build_model(specs.fmnist_specs()["DiT-FMNIST"])
    load_checkpoint(model, weights)  # strict: the EMA has exactly the model's keys
    text = card.read_text()
    assert "| steps | 3 " in text and "--model DiT-FMNIST" in text


def test_resume_from_a_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / train_model.STATE_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(L2CError, match="cannot resume"):
        train_model.load_state(tmp_path / train_model.STATE_FILE)


# ----------------------------------------------------------------------------- shipped weights


def _shipped(name: str) -> bool:
    return (
        specs.checkpoint_path(name).is_file() and CLASSIFIER_PATH.is_file() and STATS_PATH.is_file()
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_model_is_registered_with_card(name: str) -> None:
    from l2c_compile.models.registry import MODELS, get_spec

    if not _shipped(name):
        pytest.skip(f"{name} weights not built")
    assert name in MODELS
    spec = get_spec(name)
    assert Path(spec.checkpoint) == specs.checkpoint_path(name)
    assert specs.checkpoint_path(name).stat().st_size < 20 * 2**20
    card = specs.card_path(name).read_text()
    assert name in card and "final loss" in card and "Retrain" in card


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_shipped_model_samples_are_recognisable(name: str) -> None:
    """The shipped weights draw their classes: the classifier (0.90 on real test images) agrees.

    Measured on 500 seeded samples at NFE 20 and the default CFG scale: DiT-FMNIST 0.926,
    U-ViT-FMNIST 0.956 (model cards). Here 50 samples at seed 0, against a bar of 0.8.
    """
    from l2c_compile.fmnist.preview import generate, load_model
    from l2c_compile.metrics.quality import class_accuracy

    if not _shipped(name):
        pytest.skip(f"{name} weights not built")
    spec, model = load_model(name)  # strict load of the shipped safetensors
    images, labels = generate(spec, model, per_class=5, nfe=20, seed=0)
    assert images.shape == (50, 1, 32, 32)
    assert class_accuracy(images, labels) >= 0.8
