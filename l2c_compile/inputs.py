"""Files a user hands us, read as untrusted data: regular files only, JSON with size and depth caps.

Every input file (a schedule, a router, a checkpoint, an artifact's files, a diffusers config, a
prompts or data file) goes through :func:`input_file` before it is opened: a missing path, a
folder, or a special file (a fifo would block the read forever, a device never ends) is one
:class:`L2CError` line naming what is there. Inside an artifact folder links are refused too
(``links=False``): a ``weights.safetensors`` that points at another model's weights elsewhere
must not load as this artifact.

Every JSON document read from a user's file goes through :func:`read_json` / :func:`parse_json`:
at most :data:`MAX_JSON_BYTES`, nested at most :data:`MAX_JSON_DEPTH` deep (ours are at most 5),
so a tiny file cannot cost minutes or end in a ``RecursionError`` traceback.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from l2c_compile.errors import L2CError

__all__ = ["MAX_JSON_BYTES", "MAX_JSON_DEPTH", "input_file", "parse_json", "read_json"]

MAX_JSON_BYTES = 64 << 20  # the manifest of a DiT-XL/2 DDIM-50 artifact is under 1 MiB
MAX_JSON_DEPTH = 64

_KINDS = (
    (stat.S_ISFIFO, "a fifo (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def input_file(path: str | os.PathLike[str], what: str, *, links: bool = True) -> Path:
    """``path`` as a Path when it is a regular file; L2CError otherwise (one line naming ``what``).

    ``links=False`` also refuses a symbolic link (used for the files inside an artifact folder).
    """
    p = Path(path)
    try:
        st = p.lstat()
    except FileNotFoundError:
        raise L2CError(f"{what} not found: {p}") from None
    except OSError as exc:
        raise L2CError(f"cannot read the {what} {p}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        if not links:
            raise L2CError(
                f"{what} {p} is a symbolic link; refusing to follow it out of the folder "
                "(copy the file in instead)"
            )
        try:
            st = p.stat()
        except OSError:
            raise L2CError(f"{what} not found: {p} (a symbolic link to nothing)") from None
    if stat.S_ISDIR(st.st_mode):
        raise L2CError(f"the {what} {p} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise L2CError(f"the {what} {p} is {_kind(st.st_mode)}; refusing to read it")
    return p


def _check_depth(value: Any, what: str) -> None:
    """L2CError when ``value`` nests lists/objects deeper than MAX_JSON_DEPTH (iterative walk)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_JSON_DEPTH:
                    raise L2CError(f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels; refusing it")
                stack.append((child, depth + 1))


_RAISE = object()


def parse_json(text: str | bytes, what: str, *, invalid: Any = _RAISE) -> Any:
    """Parse a JSON document from untrusted ``text``; L2CError when it is larger than
    MAX_JSON_BYTES, nested deeper than MAX_JSON_DEPTH, or not valid JSON (unless ``invalid`` is
    given: then text that is not JSON gives ``invalid``)."""
    if len(text) > MAX_JSON_BYTES:
        raise L2CError(f"{what} is larger than {MAX_JSON_BYTES >> 20} MiB; refusing it")
    try:
        value = json.loads(text)
    except RecursionError:
        raise L2CError(f"{what} nests JSON deeper than {MAX_JSON_DEPTH} levels; refusing it") from None
    except UnicodeDecodeError:
        if invalid is not _RAISE:
            return invalid
        raise L2CError(f"{what} is not UTF-8 text, so not JSON") from None
    except ValueError as exc:
        if invalid is not _RAISE:
            return invalid
        raise L2CError(f"{what} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    _check_depth(value, what)
    return value


def read_json(path: str | os.PathLike[str], what: str, *, links: bool = True) -> Any:
    """The JSON document in the regular file ``path`` (see :func:`input_file` and :func:`parse_json`);
    ``what`` names it in every message."""
    p = input_file(path, what, links=links)
    size = p.stat().st_size
    if size > MAX_JSON_BYTES:
        raise L2CError(f"the {what} {p} is {size >> 20} MiB, more than {MAX_JSON_BYTES >> 20} MiB; refusing it")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise L2CError(f"cannot read the {what} {p}: {exc.strerror or exc}") from None
    return parse_json(data, f"the {what} {p}")
