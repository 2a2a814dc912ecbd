"""Outputs under faults: concurrent writers, kills, full or read-only disks, Ctrl-C (issue 27, §2).

Every output goes through ``io.atomic_path`` / ``io.atomic_folder``: locked, written under a
unique temporary name, swapped into place, and cleaned up after writers that died; nothing the
tool did not create is touched. A kill is simulated by ``os._exit`` in a child process at each
step, so no ``finally`` runs, as under SIGKILL.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import l2c_compile
from l2c_compile import io
from l2c_compile.cli.main import app
from l2c_compile.errors import L2CError
from tests.families import DECLARED

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
COMPILE = ["compile", "--model", "DiT-Tiny", "--init", "random", "--nfe", "2"]


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line(r, code: int, *needles: str) -> str:
    assert r.exit_code == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _write(folder: Path, text: str) -> None:
    with io.atomic_folder(folder) as tmp:
        (tmp / "data.txt").write_text(text)


# ---------------------------------------------------------------------------------------------
# Nothing beside the target that the tool did not create is touched
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["file", "symlink", "folder"])
def test_unrelated_old_name_beside_the_target_is_untouched(tmp_path: Path, kind: str) -> None:
    art = tmp_path / "art"
    _write(art, "one")
    old = tmp_path / ".art.old"
    if kind == "file":
        old.write_text("mine")
    elif kind == "symlink":
        old.symlink_to(tmp_path / "elsewhere")
    else:
        old.mkdir()
        (old / "keep.txt").write_text("mine")
    before = _listing(tmp_path)
    _write(art, "two")
    assert (art / "data.txt").read_text() == "two"
    assert _listing(tmp_path) == before
    assert old.is_symlink() if kind == "symlink" else old.exists()


def test_compile_force_keeps_an_unrelated_old_folder(tmp_path: Path) -> None:
    art = tmp_path / "art"
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    (tmp_path / ".art.old").write_text("not ours")
    r = runner.invoke(app, [*COMPILE, "--seed", "1", "-o", str(art), "--force"])
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / ".art.old").read_text() == "not ours"
    assert _listing(tmp_path) == sorted(
        [".art.old", "art", *(f"art/{n}" for n in ("manifest.json", "sampler.py", "weights.safetensors"))]
    )
    assert l2c_compile.load(art) is not None


# ---------------------------------------------------------------------------------------------
# Kills between the steps of a write
# ---------------------------------------------------------------------------------------------

KILL_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from l2c_compile import io

    step, target, text = sys.argv[1], Path(sys.argv[2]), sys.argv[3]

    def die(*args, **kwargs):
        os._exit(9)

    if step == "writing":
        io.apply_umask_to_folder = die          # the new folder is complete, not yet in place
    elif step == "after-swap":
        io._remove = die                        # swapped in; the old one not yet removed
    elif step.startswith("fallback"):
        io.exchange = lambda a, b: False        # a system without renameat2
        real, calls = os.rename, []
        def rename(a, b):
            calls.append(a)
            if len(calls) == (2 if step == "fallback-between" else 3):
                os._exit(9)
            real(a, b)
        io.os.rename = rename
    if target.suffix == ".txt":
        io.write_text_atomic(target, text)
    else:
        with io.atomic_folder(target) as tmp:
            (tmp / "data.txt").write_text(text)
    """
)


def _run_killed(step: str, target: Path, text: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", KILL_CHILD, step, str(target), text], env=env,
                          timeout=120).returncode


@pytest.mark.parametrize("step", ["writing", "after-swap", "fallback-between", "fallback-after"])
def test_a_kill_at_any_step_leaves_one_whole_folder(tmp_path: Path, step: str) -> None:
    art = tmp_path / "art"
    _write(art, "old")
    assert _run_killed(step, art, "new") == 9
    if step == "fallback-between":  # the documented non-atomic window: art is moved aside ...
        assert not art.exists()
        assert any(".art.l2c-old-" in name for name in _listing(tmp_path))
        with io.output_lock(art):  # ... and the next writer of art puts it back first
            assert (art / "data.txt").read_text() == "old"
    else:
        want = "old" if step == "writing" else "new"
        assert (art / "data.txt").read_text() == want
    _write(art, "next")  # the next run removes what the dead writer left
    assert _listing(tmp_path) == ["art", "art/data.txt"]
    assert (art / "data.txt").read_text() == "next"


def test_a_kill_while_writing_a_file_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "s.txt"
    target.write_text("old")
    child = KILL_CHILD.replace('io.apply_umask_to_folder = die', 'io._apply_umask = die')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rc = subprocess.run([sys.executable, "-c", child, "writing", str(target), "new"], env=env, timeout=120)
    assert rc.returncode == 9
    assert target.read_text() == "old"
    io.write_text_atomic(target, "next")
    assert _listing(tmp_path) == ["s.txt"] and target.read_text() == "next"


def test_stale_temp_names_of_live_writers_and_other_names_are_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    art = tmp_path / "art"
    (tmp_path / f".art.l2c-tmp-{dead}-0123abcd").mkdir()
    live = tmp_path / f".art.l2c-tmp-{os.getppid()}-0123abcd"  # our parent: alive
    live.mkdir()
    odd = [tmp_path / ".art.l2c-tmp-x-0123abcd", tmp_path / f".art.l2c-tmp-{dead}-0123abcd.bak",
           tmp_path / f".other.l2c-tmp-{dead}-0123abcd", tmp_path / ".art.tmp"]
    for p in odd:
        p.write_text("not ours")
    _write(art, "one")
    assert not (tmp_path / f".art.l2c-tmp-{dead}-0123abcd").exists()
    assert live.is_dir() and all(p.read_text() == "not ours" for p in odd)


# ---------------------------------------------------------------------------------------------
# Concurrent writers
# ---------------------------------------------------------------------------------------------


def _held_lock(target: Path) -> int:
    """Hold ``target``'s lock as another process would (a separate open file description)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(io.lock_path(target), os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"1\n")
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_a_second_compile_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    art = tmp_path / "new" / "art"
    fd = _held_lock(art)
    try:
        r = runner.invoke(app, [*COMPILE, "-o", str(art)])
        _one_line(r, 2, "another l2c-compile is writing art")
        assert not art.exists() and _listing(tmp_path) == ["new", "new/.art.l2c-lock"]
    finally:
        os.close(fd)
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    assert _listing(tmp_path / "new") == ["art", "art/manifest.json", "art/sampler.py", "art/weights.safetensors"]


def test_two_processes_one_writes_the_other_is_refused(tmp_path: Path) -> None:
    art = tmp_path / "art"
    holder = textwrap.dedent(
        """
        import sys, time
        from l2c_compile import io
        with io.atomic_folder(sys.argv[1]) as tmp:
            (tmp / "data.txt").write_text("first")
            print("writing", flush=True)
            sys.stdin.readline()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", holder, str(art)], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        with pytest.raises(L2CError, match=r"^another l2c-compile is writing art"):
            _write(art, "second")
        assert not art.exists()
    finally:
        child.communicate("\n", timeout=60)
    assert child.returncode == 0 and (art / "data.txt").read_text() == "first"
    assert _listing(tmp_path) == ["art", "art/data.txt"]


def test_lock_is_reentrant_and_a_foreign_lock_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    with io.output_lock(target), io.output_lock(target):
        io.write_text_atomic(target, "{}")
    assert _listing(tmp_path) == ["r.json"]
    io.lock_path(target).write_text("my notes\n")
    with pytest.raises(L2CError, match="was not written by l2c-compile"):
        io.write_text_atomic(target, "[]")
    assert target.read_text() == "{}" and io.lock_path(target).read_text() == "my notes\n"


# ---------------------------------------------------------------------------------------------
# Full, read-only or unwritable targets: refused before the work, or one line while writing
# ---------------------------------------------------------------------------------------------


def _no_work(*args, **kwargs):
    raise AssertionError("the work started although the output cannot be written")


def test_a_full_target_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(io, "_free_bytes", lambda folder: 0)
    monkeypatch.setattr(l2c_compile, "compile", _no_work)
    monkeypatch.setattr("l2c_compile.apps.evaluate.run_eval", _no_work)
    monkeypatch.setattr("l2c_compile.apps.demo._run_demo", _no_work)
    monkeypatch.setattr("l2c_compile.router.train", _no_work)
    commands = {
        "compile": [*COMPILE, "-o", str(tmp_path / "art")],
        "eval": ["eval", "--model", "DiT-FMNIST", "--nfe", "2", "--samples", "10", "-o", str(tmp_path / "e.json")],
        "demo": ["demo", "-o", str(tmp_path / "d")],
        "train": ["train", "--model", "DiT-Tiny", "--init", "random", "--nfe", "2", "--steps", "1",
                  "-o", str(tmp_path / "r.safetensors")],
    }
    for name, argv in commands.items():
        r = runner.invoke(app, argv)
        _one_line(r, 2, "no space left on the device", "nothing was written")
        assert _listing(tmp_path) == [], name


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def denied(path, *args, **kwargs):
        if str(path).endswith(io.LOCK_SUFFIX):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(io.os, "open", denied)
    monkeypatch.setattr(l2c_compile, "compile", _no_work)
    r = runner.invoke(app, [*COMPILE, "-o", str(tmp_path / "art")])
    _one_line(r, 2, "cannot write", "permission denied")
    assert _listing(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: chmod does not bind")
def test_a_read_only_folder_is_refused_before_any_work(tmp_path: Path, monkeypatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    monkeypatch.setattr(l2c_compile, "compile", _no_work)
    try:
        for argv in ([*COMPILE, "-o", str(ro / "art")],
                     ["sample", str(tmp_path / "missing"), "--classes", "1", "-o", str(ro / "x.png")]):
            r = runner.invoke(app, argv)
            _one_line(r, 2, "not writable" if argv[0] == "sample" else "permission denied")
        assert _listing(ro) == []
    finally:
        ro.chmod(0o755)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_disk_filling_up_while_writing_leaves_the_old_artifact(tmp_path: Path, monkeypatch) -> None:
    art = tmp_path / "art"
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in art.iterdir()}
    monkeypatch.setattr("safetensors.torch.save_file", _enospc)
    r = runner.invoke(app, [*COMPILE, "--seed", "1", "-o", str(art), "--force"])
    _one_line(r, 2, f"cannot write {art}: no space left on the device", "is as it was")
    assert {p.name: p.read_bytes() for p in art.iterdir()} == before
    assert _listing(tmp_path) == sorted(["art", *(f"art/{n}" for n in before)])
    r = runner.invoke(app, [*COMPILE, "-o", str(tmp_path / "new")])
    _one_line(r, 2, "no space left on the device", "nothing was written")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.EROFS, "Read-only file system"),
        RuntimeError("Error while serializing: IoError(Os { code: 28, message: \"No space left on device\" })"),
    ],
)
def test_write_failures_of_any_writer_are_one_line(tmp_path: Path, failure: Exception) -> None:
    target = tmp_path / "r.bin"
    target.write_text("old")
    reason = r"^cannot write .*r\.bin: (no space|the file system is read-only)"
    with pytest.raises(L2CError, match=reason), io.atomic_path(target):
        raise failure
    assert _listing(tmp_path) == ["r.bin"] and target.read_text() == "old"


def test_torch_save_failure_on_a_full_disk_is_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(io, "_free_bytes", lambda folder: None)  # room when the lock is taken ...
    with pytest.raises(L2CError, match="no space left on the device"), io.atomic_path(tmp_path / "c.ckpt"):
        monkeypatch.setattr(io, "_free_bytes", lambda folder: 0)  # ... none when torch.save writes
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert _listing(tmp_path) == []


def test_other_errors_while_writing_stay_what_they_are(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="a bug"), io.atomic_path(tmp_path / "x.json"):
        raise ValueError("a bug")
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Ctrl-C: "interrupted: <what was left untouched>", exit 130, no traceback
# ---------------------------------------------------------------------------------------------


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_compile_leaves_the_old_artifact(tmp_path: Path, monkeypatch) -> None:
    art = tmp_path / "art"
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    before = _listing(tmp_path)
    monkeypatch.setattr("safetensors.torch.save_file", _interrupt)  # in the middle of writing
    r = runner.invoke(app, [*COMPILE, "--seed", "1", "-o", str(art), "--force"])
    assert _one_line(r, 130) == f"interrupted: {art} is as it was"
    assert _listing(tmp_path) == before
    r = runner.invoke(app, [*COMPILE, "-o", str(tmp_path / "new")])
    assert _one_line(r, 130) == f"interrupted: {tmp_path / 'new'} was not created"
    assert _listing(tmp_path) == before


def test_ctrl_c_in_every_long_command_is_one_line(tmp_path: Path, monkeypatch) -> None:
    from l2c_compile.router import TrainingInterrupted

    def stop_training(*args, **kwargs):
        raise TrainingInterrupted(0, None)

    monkeypatch.setattr("l2c_compile.apps.evaluate.run_eval", _interrupt)
    monkeypatch.setattr("l2c_compile.apps.demo._run_demo", _interrupt)
    monkeypatch.setattr("l2c_compile.router.train", stop_training)
    monkeypatch.setattr("l2c_compile.runtime.artifact.load", _interrupt)
    monkeypatch.setattr("l2c_compile.runtime.verify.load", _interrupt)
    cases = [
        (["eval", "--model", "DiT-FMNIST", "--nfe", "2", "--samples", "10", "-o", str(tmp_path / "e.json")],
         f"interrupted: {tmp_path / 'e.json'} was not created"),
        (["eval", "--model", "DiT-FMNIST", "--nfe", "2", "--samples", "10"], "interrupted: nothing was written"),
        (["demo", "-o", str(tmp_path / "d")], f"interrupted: {tmp_path / 'd'} was not created"),
        (["train", "--model", "DiT-Tiny", "--init", "random", "--nfe", "2", "--steps", "1", "--pool-size", "4",
          "-o", str(tmp_path / "r.safetensors")],
         "interrupted: no checkpoint was written yet; "),
        (["verify", str(tmp_path / "art")], "interrupted: nothing was written"),
        (["sample", str(tmp_path / "art"), "--classes", "1", "-o", str(tmp_path / "x.png")],
         f"interrupted: {tmp_path / 'x.png'} was not created"),
    ]
    for argv, line in cases:
        r = runner.invoke(app, argv)
        assert _one_line(r, 130).startswith(line), argv
        assert _listing(tmp_path) == [], argv


def test_an_error_after_ctrl_c_is_reported_as_the_interrupt(tmp_path: Path, monkeypatch) -> None:
    from l2c_compile.cli import interrupts

    def half_imported(*args, **kwargs):  # what an import cut short looks like afterwards
        raise AttributeError("module 'torch._dynamo' has no attribute 'guards'")

    monkeypatch.setattr(interrupts, "_requested", True)
    monkeypatch.setattr(l2c_compile, "compile", half_imported)
    r = runner.invoke(app, [*COMPILE, "-o", str(tmp_path / "art")])
    assert _one_line(r, 130) == f"interrupted: {tmp_path / 'art'} was not created"


def test_capture_does_not_turn_a_broken_import_into_cannot_trace() -> None:
    import torch

    from l2c_compile.compiler.passes.trace import trace_step
    from tests.helpers import tiny_dit

    model = tiny_dit()

    def forward(*args, **kwargs):
        return torch._dynamo.no_such_submodule  # a module missing its attribute, as after Ctrl-C

    model.forward = forward
    with pytest.raises(AttributeError, match="no_such_submodule"):
        trace_step(model, cfg=True)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the import start")
def test_sigint_while_importing_torch_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "l2c_compile.cli.entry", *COMPILE, "-o", str(tmp_path / "art")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    maps = Path(f"/proc/{child.pid}/maps")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:  # wait until torch is loading
        try:
            if "libtorch" in maps.read_text():
                break
        except OSError:
            pass
        time.sleep(0.005)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err
    assert _listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# Silently wrong results refused: kinds of official routers, non-finite weights and outputs,
# guidance scales out of range, labels on another device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", DECLARED)
def test_a_three_kind_router_is_not_written_in_an_official_layout(tmp_path: Path, family: str) -> None:
    import torch

    from l2c_compile.families import get_family
    from l2c_compile.schedule.router_files import check_official_kinds, export_official

    if get_family(family).router_layout is None:
        pytest.skip(f"family {family} declares no official router layout to write")
    out = tmp_path / "px_official.pt"
    with pytest.raises(L2CError, match=r"this router has 3 \(attn, cross, mlp\)"):
        export_official(out, torch.zeros(4, 12), family, kinds=("attn", "cross", "mlp"))
    assert _listing(tmp_path) == []
    check_official_kinds(("attn", "mlp"), out)  # the two official kinds pass
    export_official(out, torch.zeros(4, 12), "dit", kinds=("attn", "mlp"))
    assert out.is_file()


def test_non_finite_weights_are_refused_at_compile_time(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from l2c_compile.models.registry import build_model, get_spec

    state = build_model(get_spec("DiT-Tiny")).state_dict()
    name = next(k for k in state if k.endswith("attn.qkv.weight"))
    state[name][0, 0] = float("nan")
    state[name][0, 1] = float("inf")
    ckpt = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    r = runner.invoke(app, ["compile", "--model", "DiT-Tiny", "--checkpoint", str(ckpt), "--nfe", "2",
                            "-o", str(tmp_path / "art")])
    _one_line(r, 2, f"parameter {name} is not finite (1 NaN and 1 infinite of", "refusing to compile")
    assert _listing(tmp_path) == ["bad.safetensors"]
    assert torch.isnan(state[name]).any()  # the caller's tensors are not changed by the check


def test_non_finite_output_is_named_by_sample_and_verify(tmp_path: Path, monkeypatch) -> None:
    import torch

    from l2c_compile.runtime.sampler import CompiledSampler

    art = tmp_path / "art"
    assert runner.invoke(app, [*COMPILE, "-o", str(art)]).exit_code == 0
    real_call = CompiledSampler.__call__

    def black(self, *args, **kwargs):
        out = real_call(self, *args, **kwargs)
        return out.masked_fill(torch.ones_like(out, dtype=torch.bool), float("nan"))

    monkeypatch.setattr(CompiledSampler, "__call__", black)
    r = runner.invoke(app, ["sample", str(art), "--classes", "1,2", "--latent-preview", "-o", str(tmp_path / "x.png")])
    _one_line(r, 2, "the output is not finite", f"{tmp_path / 'x.png'} was not written")
    assert not (tmp_path / "x.png").exists()
    r = runner.invoke(app, ["verify", str(art)])
    assert r.exit_code == 1, r.stderr
    assert "the output is not finite" in r.stderr and "nan×" not in r.stderr


def test_verdict_names_a_non_finite_output() -> None:
    from l2c_compile.runtime.tolerances import verdict

    result = {"model": "DiT-Tiny", "dtype": "float32", "artifact": "a", "max_rel_error": float("nan"),
              "rms_rel_error": float("nan"), "max_abs_error": float("nan"), "batch": 2, "seed": 0}
    v = verdict(result)
    assert not v["ok"] and "the output is not finite" in v["failure"] and "×" not in v["failure"]


@pytest.fixture(scope="module")
def tiny_sampler():
    from l2c_compile.samplers import make_plan
    from tests.helpers import tiny_dit

    return l2c_compile.compile(tiny_dit(), make_plan("ddim", 2), None)


@pytest.mark.parametrize("scale", [2.0**64, 1e308, -1e308, 10001.0, -2e4])
def test_cfg_scale_out_of_range_is_refused(tiny_sampler, scale: float) -> None:
    import torch

    noise = torch.randn(2, 4, 8, 8)
    with pytest.raises(L2CError, match=r"^cfg_scale .* is out of range: it must lie within ±10000"):
        tiny_sampler(noise, torch.tensor([0, 1]), scale)
    with pytest.raises(L2CError, match=r"out of range|must be finite"):  # float32: 1e308 is inf
        tiny_sampler(noise, torch.tensor([0, 1]), torch.tensor(scale))


def test_cfg_scale_in_range_gives_finite_samples(tiny_sampler) -> None:
    import torch

    out = tiny_sampler(torch.randn(2, 4, 8, 8), torch.tensor([0, 1]), 1e4)
    assert torch.isfinite(out).all()


def test_labels_on_another_device_are_refused(tiny_sampler) -> None:
    import torch

    noise = torch.randn(2, 4, 8, 8)
    with pytest.raises(L2CError, match=r"^labels are on meta; pass them on the noise's device \(cpu\) or the CPU$"):
        tiny_sampler(noise, torch.tensor([0, 1], device="meta"), 4.0)
    assert tiny_sampler(noise, torch.tensor([0, 1]), 4.0).shape == noise.shape
