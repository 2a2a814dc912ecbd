"""Safe file output: one mechanism for every file and folder l2c-compile writes.

Every output — an artifact folder, the demo's folder, a schedule, a router, an image, a report —
goes through :func:`atomic_path` (a file) or :func:`atomic_folder` (a folder), which

* **lock the target**: ``fcntl.flock`` on a lock file beside it (``.NAME.l2c-lock``, holding the
  owner's pid, removed when released). A second writer of the same target is refused at once with
  one line, "another l2c-compile is writing NAME", and writes nothing. The lock is re-entrant
  within a process, so a command can take it before any work (:func:`output_lock`) and the
  library writer inside takes it again. A killed owner's lock vanishes with it (the kernel drops
  flock locks of dead processes); its lock file is reused by the next writer.
* **write beside the target under a unique name** (``.NAME.l2c-tmp-<pid>-<random>``) and move it
  into place only when complete: a file by ``os.replace``; a folder that exists by swapping the
  two atomically (``renameat2(RENAME_EXCHANGE)`` on Linux), then removing the old one from the
  temporary name. Where that call is missing (other systems, some file systems) the fallback moves
  the old folder to ``.NAME.l2c-old-<pid>-<random>``, the new one into place, and removes the old:
  **not atomic** — a kill between the two renames leaves no ``NAME`` until the next writer of
  ``NAME`` puts the old folder back.
* **clean up after dead writers**: taking a lock removes the temporary names of ``NAME`` whose
  owner process is gone (and restores an ``l2c-old`` folder when ``NAME`` is missing). Only names
  of exactly these forms are touched; nothing else beside the target (``.NAME.old``, ``.NAME.bak``,
  a user's hidden folders) is ever moved or removed.
* **fail early and in one line**: taking the lock creates the lock file and writes the pid into
  it, so an unwritable or full folder is refused before any work; a full disk, a read-only file
  system or a permission error while writing becomes one :class:`L2CError` line, the temporary
  output is removed, and the target is as it was.

Python's ``tempfile`` creates files 0600 and folders 0700 whatever the umask; outputs are
re-moded to what a plain ``open()``/``mkdir`` would give (0666/0777 minus the umask).

Output folders (artifacts) are checked before any work by :func:`check_output_folder`: an
existing file, or an existing folder that holds something other than one of our artifacts, is
refused untouched; replacing an existing artifact needs ``force``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from l2c_compile.errors import L2CError
from l2c_compile.inputs import read_json

try:
    import fcntl
except ImportError:  # not POSIX: outputs are still atomic, but not locked
    fcntl = None  # type: ignore[assignment]


def current_umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no read-only API elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _apply_umask(path: Path, *, directory: bool) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def apply_umask_to_folder(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and the files in it the modes a plain ``mkdir``/``open`` would (umask)."""
    folder = Path(folder)
    _apply_umask(folder, directory=True)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            _apply_umask(p, directory=p.is_dir())


# ---------------------------------------------------------------------------------------------
# Locks on output targets
# ---------------------------------------------------------------------------------------------

LOCK_SUFFIX = ".l2c-lock"


@dataclass
class _Held:
    """A lock this process holds on one output target."""

    target: Path
    fd: int | None
    existed: bool  # whether the target was there when the lock was taken
    created: list[Path] = field(default_factory=list)  # parent folders made for the lock file
    written: bool = False  # the new output was moved into place


_HELD: dict[str, _Held] = {}
_LEFT: list[_Held] = []  # the last outputs whose writing ended in an exception (Ctrl-C's report)


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file of an output target: ``.NAME.l2c-lock`` in the same folder."""
    t = Path(target)
    return t.with_name(f".{t.name}{LOCK_SUFFIX}")


def _key(target: Path) -> str:
    return os.path.abspath(target)


def _make_parents(folder: Path, target: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                raise L2CError(f"cannot write {target}: {p} is a file, not a folder")
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            pass
        except OSError as exc:
            raise L2CError(f"cannot write {target}: {_reason(exc)} ({p})") from None
    return missing


def _open_lock(lock: Path, target: Path) -> int:
    """Open (creating) and flock ``lock``; the descriptor. L2CError if another writer holds it."""
    for _ in range(20):  # the holder may remove the file between our open and our lock: retry
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o666)
        except OSError as exc:
            raise L2CError(f"cannot write {target}: {_reason(exc)} ({lock.parent}; nothing was written)") from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise L2CError(f"another l2c-compile is writing {target.name} (nothing was written)") from None
            raise
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise L2CError(f"another l2c-compile is writing {target.name} (nothing was written)")


def _claim(fd: int, lock: Path, target: Path) -> None:
    """Check the lock file is ours to use, write our pid in it, and check the folder has room."""
    st = os.fstat(fd)
    content = os.pread(fd, 64, 0) if st.st_size <= 64 else b"x"
    if not re.fullmatch(rb"(\d+\n)?", content) or not stat.S_ISREG(st.st_mode):
        raise L2CError(f"{lock} exists and was not written by l2c-compile; remove it or choose another "
                       f"path for {target.name} (nothing was written)")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        free = _free_bytes(lock.parent)
    except OSError as exc:
        raise L2CError(f"cannot write {target}: {_reason(exc)} (nothing was written)") from None
    if free == 0:
        raise L2CError(f"cannot write {target}: no space left on the device (nothing was written)")


def _free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s file system (None: unknown)."""
    if not hasattr(os, "statvfs"):
        return None
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _release(held: _Held) -> None:
    lock = lock_path(held.target)
    if held.fd is not None:
        with contextlib.suppress(OSError):
            if os.pread(held.fd, 64, 0) == f"{os.getpid()}\n".encode():
                os.unlink(lock)  # while still locked: a waiting writer sees it gone and retries
        os.close(held.fd)
    if not held.written and not held.existed:  # nothing was made: leave no empty parents either
        for p in held.created:
            with contextlib.suppress(OSError):
                p.rmdir()


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock on output ``target`` inside the block (see the module docstring).

    Taken before any work, it doubles as the up-front check that the target's folder is
    writable and not full. L2CError (one line) when another process holds it, or the folder
    cannot take the lock file. Re-entrant within the process. On the way in it removes the
    temporary outputs of dead writers of ``target``.
    """
    t = Path(target)
    if _key(t) in _HELD:  # this process holds it already (a command, then the library writer)
        yield
        return
    created = _make_parents(t.parent, t)
    try:
        fd = _open_lock(lock_path(t), t)
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
    held = _Held(t, fd, existed=False, created=created)
    _HELD[_key(t)] = held
    try:
        _claim(fd, lock_path(t), t)
        clean_stale(t)
        held.existed = os.path.lexists(t)
        yield
    except BaseException:
        _LEFT.append(held)  # for the CLI's "interrupted: …" line (an error after Ctrl-C included)
        del _LEFT[:-16]
        raise
    finally:
        del _HELD[_key(t)]
        _release(held)


def interrupted_outputs() -> list[str]:
    """What became of each output whose writing ended in an exception since the last call (which
    the CLI makes when a command starts and when Ctrl-C ends it): one phrase each."""
    phrases = []
    for held in _LEFT:
        if any(".l2c-tmp-" in part for part in held.target.parts[:-1]):
            continue  # a file inside an unfinished folder output: that folder speaks for it
        if held.written:
            phrases.append(f"{held.target} was written before the interrupt")
        elif held.existed:
            phrases.append(f"{held.target} is as it was")
        else:
            phrases.append(f"{held.target} was not created")
    _LEFT.clear()
    return phrases


# ---------------------------------------------------------------------------------------------
# Temporary names, and cleaning up after writers that died
# ---------------------------------------------------------------------------------------------


def _temp_path(target: Path, kind: str = "tmp") -> Path:
    """A name beside ``target`` nobody else uses: ``.NAME.l2c-<kind>-<pid>-<8 hex digits>``."""
    return target.with_name(f".{target.name}.l2c-{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def clean_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary outputs of ``target`` left by writers that died; the paths handled.

    Only ``.NAME.l2c-tmp-<pid>-<hex>`` and ``.NAME.l2c-old-<pid>-<hex>`` whose pid is not a live
    process are touched; an ``l2c-old`` folder (the previous output, moved aside by the non-atomic
    fallback) is put back as ``NAME`` when ``NAME`` is missing, otherwise removed. Call it only
    while holding ``target``'s lock.
    """
    t = Path(target)
    pattern = re.compile(rf"\.{re.escape(t.name)}\.l2c-(tmp|old)-(\d+)-[0-9a-f]{{8}}")
    try:
        entries = list(t.parent.iterdir())
    except OSError:
        return []
    handled = []
    for p in sorted(entries):
        m = pattern.fullmatch(p.name)
        if m is None or _pid_alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not os.path.lexists(t):
            os.rename(p, t)
        else:
            _remove(p)
        handled.append(p)
    return handled


# ---------------------------------------------------------------------------------------------
# Write failures (full disk, read-only file system, permissions) as one line
# ---------------------------------------------------------------------------------------------

_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# The same faults as other writers word them (safetensors, PIL and torch.save wrap the OSError).
_REASON_TEXT = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
}


def _reason(exc: BaseException) -> str:
    """A short phrase for a write failure."""
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def write_failure(exc: BaseException, folder: Path) -> str | None:
    """The reason ``exc`` failed a write into ``folder`` when it is the device's or the
    permissions' fault (a full disk, a read-only file system, no permission); None otherwise."""
    if isinstance(exc, OSError) and exc.errno in _REASONS:
        return _REASONS[exc.errno]
    text = str(exc)
    for needle, code in _REASON_TEXT.items():
        if needle in text:
            return _REASONS[code]
    # torch.save says only "file write failed": a full disk is the usual cause, so look.
    if "write" in text.lower():
        with contextlib.suppress(OSError):
            if _free_bytes(folder) == 0:
                return _REASONS[errno.ENOSPC]
    return None


@contextlib.contextmanager
def _write_errors(target: Path) -> Iterator[None]:
    """Turn a full disk, a read-only file system or a permission error into one L2CError line."""
    try:
        yield
    except L2CError:
        raise
    except Exception as exc:
        reason = write_failure(exc, target.parent)
        if reason is None:
            raise
        held = _HELD.get(_key(target))
        existed = held.existed if held is not None else os.path.lexists(target)
        left = f"{target} is as it was" if existed else "nothing was written"
        raise L2CError(f"cannot write {target}: {reason} ({left})") from None


# ---------------------------------------------------------------------------------------------
# Atomic writers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success move it onto ``path``.

    Holds ``path``'s lock; the result has the mode a plain ``open(path, "w")`` would give (the
    user's umask). A failed or interrupted write leaves ``path`` as it was.
    """
    target = Path(path)
    if target.is_dir():
        raise L2CError(f"cannot write {target}: it is an existing folder")
    with output_lock(target):
        tmp = _temp_path(target)
        try:
            with _write_errors(target):
                tmp.touch(exist_ok=False)
                yield tmp
                # after writing: some writers (safetensors) re-create the file with mode 0600
                _apply_umask(tmp, directory=False)
                os.replace(tmp, target)
            _mark_written(target)
        finally:
            if os.path.lexists(tmp):
                _remove(tmp)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``path``; on success it replaces ``path`` whole.

    Holds ``path``'s lock. An existing ``path`` is swapped with the new folder in one step
    (``renameat2(RENAME_EXCHANGE)``; the non-atomic fallback elsewhere, see the module docstring)
    and then removed. The caller checks first that ``path`` may be replaced
    (:func:`check_output_folder`). A failed or interrupted write leaves ``path`` as it was.
    """
    target = Path(path)
    with output_lock(target):
        tmp = _temp_path(target)
        try:
            with _write_errors(target):
                tmp.mkdir()
                yield tmp
                apply_umask_to_folder(tmp)
                _install_folder(tmp, target)
            _mark_written(target)
        finally:
            if os.path.lexists(tmp):
                _remove(tmp)  # the unfinished output, or the old one swapped out of place


def _mark_written(target: Path) -> None:
    held = _HELD.get(_key(target))
    if held is not None:
        held.written = True


def _install_folder(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``; afterwards ``tmp`` holds the old one, if any."""
    if not os.path.lexists(target):
        os.rename(tmp, target)
        return
    if exchange(tmp, target):
        return
    old = _temp_path(target, "old")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    os.rename(old, tmp)  # the old folder goes where the caller removes it


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap the names of ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``).

    False where the system or the file system cannot (then nothing was changed); OSError for
    any other failure.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or file system without it
        return False
    raise OSError(err, os.strerror(err), os.fspath(b))


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def hold_outputs(*paths: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold the locks of every output a command will write (None entries skipped), before its work."""
    with contextlib.ExitStack() as stack:
        for p in paths:
            if p is not None:
                stack.enter_context(output_lock(p))
        yield


# ---------------------------------------------------------------------------------------------
# Output paths, checked before any work
# ---------------------------------------------------------------------------------------------


def check_parents(path: Path, what: str) -> Path | None:
    """The nearest existing ancestor of ``path`` (None if none exists); L2CError when that
    ancestor is a file, since nothing could be created under it."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise L2CError(f"cannot write the {what} to {path}: {parent} is a file, not a folder")
            return parent
    return None


def check_output_file(path: str | os.PathLike[str], what: str = "file") -> None:
    """L2CError unless a ``what`` can be written at ``path`` (checked before long work).

    Refused: an existing folder at ``path``, a parent that is a file, an unwritable folder.
    """
    p = Path(path)
    if p.is_dir():
        raise L2CError(
            f"cannot write the {what} to {p}: it is an existing folder (give a file path)"
        )
    parent = check_parents(p, what)
    if parent is not None and not os.access(parent, os.W_OK):
        raise L2CError(f"cannot write the {what} to {p}: {parent} is not writable")


ARTIFACT_FORMAT = "l2c-artifact"  # the manifest's "format" (manifest.ARTIFACT_FORMAT)


def is_artifact(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding an l2c-compile artifact (by its manifest's format)."""
    try:
        document = read_json(Path(path) / "manifest.json", "artifact manifest", links=False)
    except L2CError:
        return False
    return isinstance(document, dict) and document.get("format") == ARTIFACT_FORMAT


def check_output_folder(
    path: str | os.PathLike[str], *, force: bool, what: str = "artifact", flag: str = "--force"
) -> None:
    """Refuse an output folder that writing ``what`` there would put at risk; L2CError otherwise.

    Allowed: a path that does not exist (its parents may not either, but none may be a file),
    an empty folder, and — with ``force`` — an existing artifact (replaced atomically). Refused:
    an existing file (or other non-folder), a folder holding anything else, and an existing
    artifact without ``force`` (the message names ``flag``).
    """
    p = Path(path)
    check_parents(p, what)
    if not p.exists() and not p.is_symlink():
        return
    if not p.is_dir() or p.is_symlink():
        kind = "an existing file" if p.is_file() else "not a folder"
        raise L2CError(
            f"{p} is {kind}; refusing to replace it with an {what} folder (nothing was written; "
            "choose another path)"
        )
    if not any(p.iterdir()):
        return
    if not is_artifact(p):
        raise L2CError(
            f"{p} is a folder that does not hold an l2c-compile {what}; refusing to replace it "
            "(nothing was written; choose another path)"
        )
    if not force:
        raise L2CError(f"{p} already holds an {what}; pass {flag} to replace it")
