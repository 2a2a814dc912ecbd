"""Output files are never put at risk (issue 12, items 7 and 8).

An output path that is an existing file, or an existing folder that is not one of our artifacts,
is refused before any work and left untouched; replacing an artifact needs --force; every
output gets the user's umask, not tempfile's 0600/0700.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

import l2c_compile
from l2c_compile import io
from l2c_compile.cli.main import app
from l2c_compile.errors import L2CError
from l2c_compile.runtime import manifest
from l2c_compile.samplers import make_plan
from tests.helpers import tiny_dit

runner = CliRunner()
COMPILE = ["compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", "2"]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line_error(r, *needles: str) -> None:
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0]


def test_artifact_format_is_shared() -> None:
    assert io.ARTIFACT_FORMAT == manifest.ARTIFACT_FORMAT


def test_existing_file_is_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "afile"
    target.write_text("hi\n")
    before = _listing(tmp_path)
    r = runner.invoke(app, [*COMPILE, "-o", str(target)])
    _one_line_error(r, "is an existing file", "nothing was written")
    assert target.read_text() == "hi\n" and _listing(tmp_path) == before


def test_foreign_folder_is_refused_untouched(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    target.mkdir()
    (target / "holiday.jpg").write_bytes(b"\xff\xd8")
    r = runner.invoke(app, [*COMPILE, "-o", str(target)])
    _one_line_error(r, "does not hold an l2c-compile artifact")
    assert _listing(tmp_path) == ["photos", "photos/holiday.jpg"]


def test_parent_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    r = runner.invoke(app, [*COMPILE, "-o", str(tmp_path / "f" / "art")])
    _one_line_error(r, "is a file, not a folder")


def test_replacing_an_artifact_needs_force(tmp_path: Path) -> None:
    art = tmp_path / "art"
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    first = (art / "manifest.json").read_bytes()
    r = runner.invoke(app, [*COMPILE, "--seed", "1", "-o", str(art)])
    _one_line_error(r, "already holds an artifact", "--force")
    assert (art / "manifest.json").read_bytes() == first
    r = runner.invoke(app, [*COMPILE, "--seed", "1", "-o", str(art), "--force"])
    assert r.exit_code == 0, r.stderr
    assert l2c_compile.load(art) is not None
    assert _listing(tmp_path) == sorted(
        ["art", *(f"art/{n}" for n in ("manifest.json", "sampler.py", "weights.safetensors"))]
    )


def test_empty_folder_is_used(tmp_path: Path) -> None:
    art = tmp_path / "art"
    art.mkdir()
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    assert io.is_artifact(art)


def test_library_save_refuses_a_file(tmp_path: Path) -> None:
    sampler = l2c_compile.compile(tiny_dit(), make_plan("ddim", 2), None)
    target = tmp_path / "afile"
    target.write_text("keep me")
    with pytest.raises(L2CError, match="is an existing file"):
        sampler.save(target)
    assert target.read_text() == "keep me" and _listing(tmp_path) == ["afile"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        sampler = l2c_compile.compile(tiny_dit(), make_plan("ddim", 2), None)
        art = sampler.save(tmp_path / "art")
        io.write_text_atomic(tmp_path / "s.json", "{}")
        r = runner.invoke(
            app,
            [
                "schedule",
                "heuristic",
                "-m",
                "DiT-Tiny",
                "--nfe",
                "2",
                "--kind",
                "all",
                "-o",
                str(tmp_path / "h.json"),
            ],
        )
        assert r.exit_code == 0
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(art) == 0o777 & ~umask
    for name in ("manifest.json", "sampler.py", "weights.safetensors"):
        assert mode(art / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "s.json") == 0o666 & ~umask
    assert mode(tmp_path / "h.json") == 0o666 & ~umask
