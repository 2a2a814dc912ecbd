"""Say what a file is when it is not what was expected (a checkpoint, a router).

torch's own errors for a wrong file are unhelpful to a user: random bytes end in a paragraph about
``weights_only`` defaults, a text file in a bare ``101`` (a ``KeyError`` from the unpickler's
opcode table). :func:`describe_bytes` looks at the first bytes and names the kind of file;
:func:`torch_load_problem` turns a failed ``torch.load`` into a short reason.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

__all__ = ["describe_bytes", "describe_file", "torch_load_problem", "weights_only_refusal"]

_MAGIC = (
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x7fELF", "an executable (ELF)"),
)
_PRINTABLE = set(string.printable.encode())


def describe_bytes(head: bytes) -> str:
    """What a file starting with ``head`` (its first few hundred bytes) looks like, in words."""
    if not head:
        return "an empty file"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:9] == b"{":
        return "a safetensors file"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return f"a Python pickle (protocol {head[1]}, torch's legacy format)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(b in _PRINTABLE or b >= 0x80 for b in head):
        first = text.strip().splitlines()[0] if text.strip() else ""
        kind = "a JSON document" if text.lstrip().startswith(("{", "[")) else "a text file"
        preview = first[:40] + ("…" if len(first) > 40 else "")
        return f"{kind} (starting {preview!r})" if preview else kind
    return f"unrecognised binary data (first bytes {head[:8].hex(' ')})"


def describe_file(path: str | Path, size: int = 512) -> str:
    """:func:`describe_bytes` of the first ``size`` bytes of ``path``."""
    with Path(path).open("rb") as fh:
        return describe_bytes(fh.read(size))


_UNSAFE = re.compile(r"GLOBAL ([\w.]+)")
_REFUSALS = ("allowlisted", "allowed global", "safe_globals", "is blocked")


def weights_only_refusal(exc: BaseException) -> str | None:
    """Why a safe load refused a file, when ``exc`` is torch's ``weights_only`` refusal (a pickle
    that names code or a class outside the tensor allow-list); None for any other failure.

    torch's own text advises re-running with ``weights_only=False``, which would run whatever the
    file names: that advice is never passed on.
    """
    text = str(exc)
    unsafe = _UNSAFE.search(text)
    if unsafe is None and not any(word in text for word in _REFUSALS):
        return None  # e.g. "Unsupported operand": bytes that are no pickle at all
    what = f"a {unsafe.group(1)} object" if unsafe else "objects other than tensors and plain data"
    return (
        f"refused: it pickles {what}, code or a class a safe load (weights_only) never runs, so it "
        "is not a plain checkpoint of tensors (if you made it, save a plain state dict of tensors instead)"
    )


def torch_load_problem(exc: BaseException, head: bytes) -> str:
    """A short reason why ``torch.load(weights_only=True)`` failed on a file starting ``head``:
    a refused pickle (:func:`weights_only_refusal`) is said apart from a truncated or corrupt file,
    and none of torch's own text reaches the user."""
    refusal = weights_only_refusal(exc)
    if refusal is not None:
        return refusal
    kind = describe_bytes(head)
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive torch cannot read (truncated or corrupt, or not a torch file)"
    if kind.startswith("a Python pickle"):
        return f"it is {kind} that cannot be read (truncated or corrupt)"
    return f"it is {kind}"
