"""thop-convention MACs (spec §5.3): per forward, per sublayer, per trajectory with caching."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from l2c_compile.errors import L2CError
from l2c_compile.metrics import (
    count_macs,
    forward_macs,
    measure_macs,
    sublayer_macs,
    trajectory_macs,
)
from l2c_compile.metrics.macs import model_table
from l2c_compile.models import get_spec

G, T = 1e9, 1e12


@dataclass(frozen=True)
class Call:
    attn: tuple[int, ...] = ()
    mlp: tuple[int, ...] = ()
    kinds = ("attn", "mlp")

    def reused(self, kind: str) -> tuple[int, ...]:
        return getattr(self, kind)


@dataclass(frozen=True)
class Schedule:
    nfe: int
    calls: tuple[Call, ...]


def schedule_from_counts(nfe: int, cache_rows: list[tuple[int, int]]) -> Schedule:
    """A schedule whose cache calls reuse the first #MHSA / #FFN blocks (spec §5.2 counts)."""
    cache = [Call(tuple(range(a)), tuple(range(m))) for a, m in cache_rows]
    full = [Call()] * (nfe - len(cache))
    return Schedule(nfe, tuple(full + cache))


# Per cache step (#MHSA reused, #FFN reused) of the four released routers, spec §5.2.
DDIM20 = [(28, 28), (28, 28), (26, 26), (25, 23), (11, 19), (2, 1), (1, 0), (1, 0), (1, 0), (0, 0)]
DPM20 = [(29, 29), (27, 29), (24, 28), (25, 27), (24, 26), (19, 23), (3, 6), (3, 3), (4, 4)]


def hand_count(name: str) -> int:
    """Linear/Conv MACs per image written out from the architecture constants."""
    spec = get_spec(name)
    d, p, (c, h, _) = spec.hidden, spec.patch, spec.latent_shape
    n = (h // p) ** 2
    tok = spec.tokens
    block = tok * d * 3 * d + tok * d * d + 2 * tok * d * 4 * d  # qkv, proj, fc1, fc2
    patch = n * d * c * p * p
    if spec.family == "dit":
        depth = spec.kwargs["depth"]
        t_emb = 256 * d + d * d
        final = 2 * d * d + tok * d * p * p * 2 * c  # adaLN (per sample) + linear (learned σ)
        return depth * (block + 6 * d * d) + patch + t_emb + final
    units = spec.kwargs["depth"] // 2
    skips = units * tok * 2 * d * d
    conv = c * 9 * c * h * h if spec.kwargs["conv"] else 0
    return (2 * units + 1) * block + skips + patch + tok * d * p * p * c + conv


def test_dit_xl2_per_forward_matches_spec() -> None:
    macs = forward_macs("DiT-XL/2")
    assert macs == pytest.approx(114.394 * G, rel=1e-4)
    assert 20 * macs == pytest.approx(2.288 * T, rel=1e-3)
    assert 50 * macs == pytest.approx(5.720 * T, rel=1e-3)
    assert 250 * macs == pytest.approx(28.60 * T, rel=1e-3)


def test_uvit_h2_per_forward_matches_spec() -> None:
    macs = forward_macs("U-ViT-H/2")
    assert macs == pytest.approx(128.749 * G, rel=1e-4)
    assert 20 * macs == pytest.approx(2.575 * T, rel=1e-3)
    assert 50 * macs == pytest.approx(6.437 * T, rel=1e-3)


def test_sublayer_macs_match_spec() -> None:
    attn, mlp = sublayer_macs("DiT-XL/2").values()
    assert attn == 256 * 1152 * 4 * 1152 and mlp == 2 * attn  # 1.3590 G, 2.7179 G
    attn, mlp = sublayer_macs("U-ViT-H/2").values()
    assert attn == pytest.approx(1.3696 * G, rel=1e-4) and mlp == pytest.approx(
        2.7391 * G, rel=1e-4
    )


def test_other_sizes_match_the_spec_baselines() -> None:
    # Spec §5.3 uses 456.9 G for DiT-XL/2-512 (1024 tokens) and 77.4 G for DiT-L/2.
    assert forward_macs("DiT-XL/2-512") == pytest.approx(456.9 * G, rel=1e-3)
    assert forward_macs("DiT-L/2") == pytest.approx(77.4 * G, rel=1e-3)


@pytest.mark.parametrize(
    "name", ["DiT-XL/2", "DiT-S/8-512", "U-ViT-H/2", "U-ViT-L/2", "DiT-Tiny", "U-ViT-Tiny"]
)
def test_forward_macs_equal_a_hand_count(name: str) -> None:
    assert forward_macs(name) == hand_count(name)  # U-ViT-L/2 includes its 3×3 conv head


@pytest.mark.parametrize("name", ["DiT-Tiny", "U-ViT-Tiny", "DiT-S/8"])
def test_depth_extrapolation_equals_a_full_measurement(name: str) -> None:
    assert count_macs(get_spec(name)) == measure_macs(get_spec(name))


def test_trajectory_macs_of_the_released_routers() -> None:
    # Spec §5.3 table: DDIM20 2.288 → 1.781 T; dpm20 2.575 → 1.879 T.
    full, cached = trajectory_macs("DiT-XL/2", schedule_from_counts(20, DDIM20))
    assert full == 20 * forward_macs("DiT-XL/2")
    assert full / T == pytest.approx(2.288, abs=5e-4) and cached / T == pytest.approx(
        1.781, abs=5e-4
    )
    full, cached = trajectory_macs("U-ViT-H/2", schedule_from_counts(20, DPM20))
    assert full / T == pytest.approx(2.575, abs=5e-4) and cached / T == pytest.approx(
        1.879, abs=5e-4
    )
    assert full / cached == pytest.approx(1.370, abs=1e-3)


def test_trajectory_savings_are_per_reused_sublayer() -> None:
    attn, mlp = sublayer_macs("DiT-Tiny").values()
    sched = Schedule(3, (Call(), Call((0, 2), (1,)), Call((), (0, 1, 2))))
    full, cached = trajectory_macs("DiT-Tiny", sched)
    assert full - cached == 2 * attn + 4 * mlp
    dup = Schedule(2, (Call(), Call((1, 1), ())))  # a block listed twice is reused once
    assert trajectory_macs("DiT-Tiny", dup)[0] - trajectory_macs("DiT-Tiny", dup)[1] == attn


def test_trajectory_baseline_without_schedule() -> None:
    f = forward_macs("U-ViT-Tiny")
    assert trajectory_macs("U-ViT-Tiny", None, nfe=50) == (50 * f, 50 * f)
    with pytest.raises(L2CError, match="schedule or an nfe"):
        trajectory_macs("U-ViT-Tiny", None)


def test_trajectory_rejects_mismatches() -> None:
    sched = Schedule(2, (Call(), Call((5,), ())))
    with pytest.raises(L2CError, match="block 5, but U-ViT-Tiny has 5 blocks"):
        trajectory_macs("U-ViT-Tiny", sched)
    with pytest.raises(L2CError, match="nfe 4 does not match"):
        trajectory_macs("U-ViT-Tiny", Schedule(2, (Call(), Call())), nfe=4)


def test_model_table_reports_forward_macs() -> None:
    (row,) = model_table(["U-ViT-H/2"])
    assert row["macs_per_forward"] == forward_macs("U-ViT-H/2")


def test_timing_note_flags_a_speedup_the_schedule_cannot_give():
    from l2c_compile.metrics.macs import timing_note

    assert timing_note(1.2, 1.209) is None  # within what the MACs allow
    assert timing_note(1.05, None) is None  # no MACs ratio known: nothing to compare
    note = timing_note(1.749, 1.209)
    assert note is not None and "exceeds the schedule's ideal 1.21×" in note
