"""Safe file output: atomic writes with the user's umask, and output paths checked before work.

Atomic: write to a temporary file (or folder) beside the target, then rename it into place, so a
crash or Ctrl-C half-way through never leaves a half-written output behind. Python's
``tempfile`` creates files 0600 and folders 0700 whatever the umask; outputs are re-moded to what
a plain ``open()``/``mkdir`` would give (0666/0777 minus the umask), so they are as readable as
any other file the user writes.

Output folders (artifacts) are checked before any work by :func:`check_output_folder`: an
existing file, or an existing folder that holds something other than one of our artifacts, is
refused untouched; replacing an existing artifact needs ``force``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from l2c_compile.errors import L2CError
from l2c_compile.inputs import read_json


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    The result has the mode a plain ``open(path, "w")`` would give (the user's umask).
    """
    target = Path(path)
    if target.is_dir():
        raise L2CError(f"cannot write {target}: it is an existing folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise L2CError(f"cannot write {target}: {target.parent} is not a folder") from None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # after writing: some writers (safetensors) re-create the file with mode 0600
        _apply_umask(tmp_path, directory=False)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def make_temp_dir(target: str | os.PathLike[str]) -> Path:
    """A fresh hidden folder beside ``target`` (for an atomic folder write), with the user's umask."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    _apply_umask(tmp, directory=True)
    return tmp


def apply_umask_to_folder(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and the files in it the modes a plain ``mkdir``/``open`` would (umask)."""
    folder = Path(folder)
    _apply_umask(folder, directory=True)
    for p in folder.rglob("*"):
        if not p.is_symlink():
            _apply_umask(p, directory=p.is_dir())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


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
