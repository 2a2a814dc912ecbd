"""The `l2c-compile` command line: env, models, schedule import / heuristic / show.

Oracles: the model table of L2C_SPEC.md §5.3 and the released-router table of
shared/data/routers/README.md (copied here as literals). Every bad input must end in exit
status 2 with exactly one line on stderr, no traceback, and no output file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from l2c_compile.cli.main import app
from l2c_compile.cli.models_cmd import human
from l2c_compile.models.registry import MODELS
from l2c_compile.schedule import DEFAULT_THRESHOLDS, Schedule, default_threshold
from l2c_compile.schedule.router_files import export_official

ROUTERS = Path(__file__).resolve().parents[1].parent / "shared/data/routers"


def _runner() -> CliRunner:
    # click < 8.2 mixes stderr into stdout unless told not to; 8.2+ always keeps them apart.
    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()


RUNNER = _runner()


def cli(*args: str | Path) -> object:
    """Run `l2c-compile ARGS` in-process and return click's Result."""
    return RUNNER.invoke(app, [str(a) for a in args])


def ok_json(*args: str | Path) -> object:
    """Run a command that must succeed with ``--format json`` and parse its stdout."""
    result = cli(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr or result.stdout
    return json.loads(result.stdout)


def assert_one_line_error(result: object, *needles: str) -> str:
    """Exit 2, nothing on stdout, one `error:` line on stderr naming the problem."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def fake_official_router(path: Path, rows: int, depth: int, family: str = "dit") -> Path:
    """A router in an official layout with random logits (no released file needed)."""
    logits = torch.randn(rows, 2 * depth, generator=torch.Generator().manual_seed(0))
    export_official(path, logits, family)
    return path


# ---------------------------------------------------------------------------------------------
# env, models, entry point
# ---------------------------------------------------------------------------------------------


def test_env_json_reports_versions() -> None:
    import l2c_compile

    info = ok_json("env")
    assert info["torch"] == torch.__version__
    assert info["l2c_compile"] == l2c_compile.__version__
    assert info["cuda_available"] is torch.cuda.is_available()


def test_models_json_lists_every_model_with_exact_counts() -> None:
    rows = ok_json("models")
    assert [r["name"] for r in rows] == list(MODELS)
    by_name = {r["name"]: r for r in rows}
    dit, uvit = by_name["DiT-XL/2"], by_name["U-ViT-H/2"]
    assert (dit["family"], dit["depth"], dit["params"]) == ("dit", 28, 675129632)
    assert (uvit["family"], uvit["depth"], uvit["params"]) == ("uvit", 29, 500832016)
    # spec §5.3: 114.394 G and 128.749 G per forward, thop convention
    assert round(dit["macs_per_forward"] / 1e9, 3) == 114.394
    assert round(uvit["macs_per_forward"] / 1e9, 3) == 128.749
    assert (dit["hidden"], dit["heads"], dit["patch"], dit["tokens"]) == (1152, 16, 2, 256)
    assert uvit["tokens"] == 258  # 256 patches + label + time token
    assert all(
        isinstance(r["params"], int) and isinstance(r["macs_per_forward"], int) for r in rows
    )

    # The rich view reuses the (cached) counts and prints them with units.
    result = cli("models")
    assert result.exit_code == 0, result.stderr
    assert "U-ViT-Tiny" in result.stdout
    assert "114.394 G" in result.stdout


def test_human_units() -> None:
    assert human(2_287_871_262_720) == "2.288 T"
    assert human(675_129_632, digits=1) == "675.1 M"
    assert human(999) == "999"
    assert human(1_500, "MACs", digits=1) == "1.5 kMACs"


def test_module_entry_point_help() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "l2c_compile.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("env", "models", "schedule", "compile"):
        assert command in proc.stdout


def test_schedule_group_lists_its_commands() -> None:
    result = cli("schedule", "--help")
    assert result.exit_code == 0
    for command in ("import", "heuristic", "show"):
        assert command in result.stdout


def test_default_thresholds_are_the_documented_ones() -> None:
    assert DEFAULT_THRESHOLDS == {"dit": 0.1, "uvit": 0.9}
    assert default_threshold("uvit") == 0.9


# ---------------------------------------------------------------------------------------------
# The released routers reproduce the README table through the CLI
# ---------------------------------------------------------------------------------------------

# file, model, NFE, cache steps, skipped attention, skipped MLP, MACs full → cached (T)
README = {
    "DDIM20": ("DDIM20_router.pt", "DiT-XL/2", 20, 10, 123, 125, 2.288, 1.781),
    "DDIM50": ("DDIM50_router.pt", "DiT-XL/2", 50, 25, 329, 335, 5.720, 4.362),
    "dpm20": ("dpm20_router.pth", "U-ViT-H/2", 20, 9, 158, 175, 2.575, 1.879),
    "dpm50": ("dpm50_router.pth", "U-ViT-H/2", 50, 24, 649, 655, 6.437, 3.754),
}


@pytest.mark.parametrize("name", list(README))
def test_released_router_import_and_show_match_readme(name: str, tmp_path: Path) -> None:
    file, model, nfe, steps, attn, mlp, full_t, cached_t = README[name]
    router = ROUTERS / file
    if not router.is_file():
        pytest.skip(f"released router {router} not available")
    out = tmp_path / f"{name}.json"
    # no --sampler, no --threshold: the model's default sampler and the documented θ
    imported = ok_json("schedule", "import", router, "--model", model, "--nfe", str(nfe), "-o", out)
    assert imported["schedule"] == str(out)
    shown = ok_json("schedule", "show", out)
    assert {k: v for k, v in imported.items() if k != "schedule"} == shown

    depth = 28 if model == "DiT-XL/2" else 29
    expected_sampler = "ddim" if model == "DiT-XL/2" else "dpm-solver-2"
    assert (shown["model"], shown["sampler"], shown["nfe"]) == (model, expected_sampler, nfe)
    assert shown["threshold"] == (0.1 if model == "DiT-XL/2" else 0.9)
    assert shown["cache_steps"] == steps
    assert (shown["skipped_attn"], shown["skipped_mlp"]) == (attn, mlp)
    assert shown["total_cache_sublayers"] == 2 * steps * depth
    assert shown["skipped_fraction"] == pytest.approx((attn + mlp) / (2 * steps * depth))
    assert round(shown["macs_full"] / 1e12, 3) == full_t
    assert round(shown["macs_cached"] / 1e12, 3) == cached_t
    assert shown["ideal_speedup"] == pytest.approx(shown["macs_full"] / shown["macs_cached"])
    assert Schedule.load(out).source["file"] == file


def test_show_rich_draws_grid_and_summary(tmp_path: Path) -> None:
    router = ROUTERS / "DDIM20_router.pt"
    if not router.is_file():
        pytest.skip(f"released router {router} not available")
    out = tmp_path / "d20.json"
    assert (
        cli("schedule", "import", router, "-m", "DiT-XL/2", "--nfe", "20", "-o", out).exit_code == 0
    )
    result = cli("schedule", "show", out)
    assert result.exit_code == 0, result.stderr
    # spec §5.2 grid rows (router idx 12 and 10) and the summary's MAC line
    assert " 12  631  BAAABBBBBBBBBBBBBBBBBBBBMA.M" in result.stdout
    assert " 10  526  BA.ABBMMMMBBBMMBMMMMB.B....." in result.stdout
    assert "2.288 T → 1.781 T" in result.stdout
    assert "123 / 280 (43.93%)" in result.stdout


# ---------------------------------------------------------------------------------------------
# heuristic, --png
# ---------------------------------------------------------------------------------------------


def test_heuristic_bottom_half_on_tiny_dit(tmp_path: Path) -> None:
    out = tmp_path / "h.json"
    args = ("schedule", "heuristic", "-m", "DiT-Tiny", "--nfe", "6", "--kind", "bottom")
    summary = ok_json(*args, "--fraction", "0.5", "-o", out)
    sched = Schedule.load(out)
    assert sched.source == {"kind": "heuristic", "heuristic": "bottom", "fraction": 0.5}
    # DDIM 6: 3 cache calls; bottom half of 6 entries = attn0, mlp0, attn1
    assert [c.reused("attn") for c in sched.cache_calls] == [(0, 1)] * 3
    assert [c.reused("mlp") for c in sched.cache_calls] == [(0,)] * 3
    assert (summary["cache_steps"], summary["skipped_attn"], summary["skipped_mlp"]) == (3, 6, 3)
    assert summary["threshold"] is None
    assert summary["macs_cached"] < summary["macs_full"]
    assert summary["ideal_speedup"] > 1.0


def test_heuristic_random_is_seeded_and_all_needs_no_fraction(tmp_path: Path) -> None:
    base = ("schedule", "heuristic", "-m", "U-ViT-Tiny", "--nfe", "10", "--format", "json")
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for path, seed in ((a, "3"), (b, "3"), (c, "4")):
        assert (
            cli(
                *base, "--kind", "random", "--fraction", "0.4", "--seed", seed, "-o", path
            ).exit_code
            == 0
        )
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()

    everything = tmp_path / "all.json"
    summary = ok_json(
        "schedule",
        "heuristic",
        "-m",
        "U-ViT-Tiny",
        "--nfe",
        "10",
        "--kind",
        "all",
        "-o",
        everything,
    )
    assert summary["skipped_fraction"] == 1.0
    assert summary["sampler"] == "dpm-solver-2"  # the model's default


def test_show_png_writes_a_heatmap(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sched, png = tmp_path / "h.json", tmp_path / "plots" / "h.png"
    args = ("-m", "DiT-Tiny", "--nfe", "6", "--kind", "top", "--fraction", "0.5", "-o", sched)
    assert cli("schedule", "heuristic", *args).exit_code == 0
    summary = ok_json("schedule", "show", sched, "--png", png)
    assert summary["png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000

    rich = cli("schedule", "show", sched, "--png", tmp_path / "again.png")
    assert rich.exit_code == 0
    assert (tmp_path / "again.png").is_file()
    assert "DiT-Tiny" in rich.stdout


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# ---------------------------------------------------------------------------------------------


def test_import_missing_router(tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = cli(
        "schedule", "import", tmp_path / "nope.pt", "-m", "DiT-XL/2", "--nfe", "20", "-o", out
    )
    assert_one_line_error(result, "not found", "nope.pt")
    assert not out.exists()


def test_import_corrupt_router(tmp_path: Path) -> None:
    bad, out = tmp_path / "bad.pt", tmp_path / "s.json"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    result = cli("schedule", "import", bad, "-m", "DiT-XL/2", "--nfe", "20", "-o", out)
    assert_one_line_error(result, "bad.pt")
    assert not out.exists()


def test_import_router_for_the_other_model(tmp_path: Path) -> None:
    router, out = fake_official_router(tmp_path / "dit.pt", 20, 28), tmp_path / "s.json"
    result = cli("schedule", "import", router, "-m", "U-ViT-H/2", "--nfe", "20", "-o", out)
    assert_one_line_error(result, "56", "58")
    assert not out.exists()


def test_import_nfe_mismatch(tmp_path: Path) -> None:
    router, out = fake_official_router(tmp_path / "dit.pt", 20, 28), tmp_path / "s.json"
    result = cli("schedule", "import", router, "-m", "DiT-XL/2", "--nfe", "50", "-o", out)
    assert_one_line_error(result, "20", "50")
    assert not out.exists()


def test_import_bad_threshold(tmp_path: Path) -> None:
    router, out = fake_official_router(tmp_path / "dit.pt", 20, 28), tmp_path / "s.json"
    args = ("-m", "DiT-XL/2", "--nfe", "20", "--threshold", "1.5", "-o", out)
    assert_one_line_error(cli("schedule", "import", router, *args), "threshold")
    assert not out.exists()


@pytest.mark.parametrize("command", ["import", "heuristic"])
def test_unknown_model_and_sampler(command: str, tmp_path: Path) -> None:
    router = fake_official_router(tmp_path / "dit.pt", 20, 28)
    out = tmp_path / "s.json"
    head = ("schedule", command, router) if command == "import" else ("schedule", command)
    tail = ("--nfe", "20", "-o", out) + (() if command == "import" else ("--kind", "all"))
    line = assert_one_line_error(cli(*head, "-m", "DiT-XXL/2", *tail), "unknown model")
    assert "DiT-XL/2" in line  # did you mean
    assert_one_line_error(
        cli(*head, "-m", "DiT-XL/2", "-s", "ddpm", *tail), "unknown sampler", "ddpm"
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--kind", "top", "--fraction", "1.5"), "fraction"),
        (("--kind", "top", "--fraction", "-0.1"), "fraction"),
        (("--kind", "random"), "--fraction"),
        (("--kind", "middle", "--fraction", "0.5"), "unknown heuristic"),
    ],
)
def test_heuristic_bad_input(extra: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    out = tmp_path / "s.json"
    result = cli("schedule", "heuristic", "-m", "DiT-Tiny", "--nfe", "6", *extra, "-o", out)
    assert_one_line_error(result, needle)
    assert not out.exists()


def test_show_bad_files(tmp_path: Path) -> None:
    assert_one_line_error(cli("schedule", "show", tmp_path / "missing.json"), "not found")
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json", encoding="utf-8")
    assert_one_line_error(cli("schedule", "show", garbage), "garbage.json", "JSON")
    binary = tmp_path / "router.json"
    binary.write_bytes(b"\x80\x02\xff\xfe")
    assert_one_line_error(cli("schedule", "show", binary), "router.json")


def test_show_bad_png_leaves_nothing(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sched = tmp_path / "h.json"
    args = ("-m", "DiT-Tiny", "--nfe", "6", "--kind", "all", "-o", sched)
    assert cli("schedule", "heuristic", *args).exit_code == 0
    bad = tmp_path / "h.xyz"
    assert_one_line_error(cli("schedule", "show", sched, "--png", bad), ".xyz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.json"]


def test_show_schedule_whose_depth_does_not_fit_its_model(tmp_path: Path) -> None:
    sched = tmp_path / "h.json"
    args = ("-m", "DiT-Tiny", "--nfe", "6", "--kind", "all", "-o", sched)
    assert cli("schedule", "heuristic", *args).exit_code == 0
    doc = json.loads(sched.read_text(encoding="utf-8"))
    doc["model"] = "DiT-XL/2"  # 3-block schedule relabelled for a 28-block model
    sched.write_text(json.dumps(doc), encoding="utf-8")
    assert_one_line_error(cli("schedule", "show", sched), "3 blocks", "28")


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    out = blocker / "s.json"  # a path under a regular file cannot be created
    args = ("-m", "DiT-Tiny", "--nfe", "6", "--kind", "all", "-o", out)
    assert_one_line_error(cli("schedule", "heuristic", *args), "cannot write")
