"""An artifact's manifest: its format, the typed :class:`Manifest`, and how it is written and read.

``manifest.json`` records the format and version, the l2c-compile and torch versions, the
compile record (model config, sampler, NFE, dtype, schedule, cfg, fuse, hoist, cuda_graph, pass
reports) and the sha256 of every other file (:data:`FILES`). :func:`artifact_manifest` builds it
from a :class:`~l2c_compile.runtime.record.CompileRecord`, :func:`manifest_text` gives its bytes, :func:`parse_manifest` checks a
document read back and types the fields that loading acts on.

This module sits below both the writer (:meth:`~l2c_compile.runtime.sampler.CompiledSampler.save`) and the
loader (:func:`~l2c_compile.runtime.artifact.load`): the loader compiles, and the compiler builds
``CompiledSampler``, so the manifest cannot live in either without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from l2c_compile.errors import L2CError
from l2c_compile.runtime.record import CompileRecord
from l2c_compile.schedule import Schedule
from l2c_compile.version import __version__

ARTIFACT_FORMAT = "l2c-artifact"
# 2: no timings, sampler.py regenerated and compared by load; 3: backend; 4: hoist; 5: sample() unpacks
# each step's cache outputs by name and passes cache inputs by keyword (step code reads like the model's)
ARTIFACT_VERSION = 5
FILES = ("sampler.py", "weights.safetensors")
DTYPE_NAMES = ("float32", "bfloat16", "float16")
FLAGS = ("cfg", "fuse", "cuda_graph", "hoist")  # the manifest's true/false fields
# how step graphs run: as written, compiled whole, or their sublayers compiled (backends.py)
BACKENDS = ("eager", "inductor", "regional")


@dataclass(frozen=True)
class Manifest:
    """An artifact manifest: the fields ``load`` acts on, typed, and the whole document.

    ``verify`` and the CLI read a sampler's compile record (``CompiledSampler.record``), which for a
    loaded artifact ``load`` has checked equal to this manifest field by field.

    ``model`` and ``sampler`` stay JSON records: their readers check them
    (:func:`~l2c_compile.runtime.artifact.build_from_info`, :func:`~l2c_compile.runtime.artifact.plan_from_manifest`).
    ``schedule`` is parsed (:meth:`~l2c_compile.schedule.Schedule.from_dict`; None: all-compute).
    ``document`` is the whole manifest as written, key order included, so :func:`manifest_text`
    reproduces its bytes.
    """

    model: Any
    sampler: Any
    schedule: Schedule | None
    dtype: str
    cfg: bool
    fuse: bool
    cuda_graph: bool
    hoist: bool  # the prologue (passes/hoist.py) was built, within hoist_limit_bytes per image
    hoist_limit_bytes: int
    backend: str  # one of BACKENDS: what the sampler was compiled for; load honours it
    files: dict[str, str]
    document: dict[str, Any] = field(repr=False, compare=False)


def _typed(document: dict[str, Any], schedule: Schedule | None) -> Manifest:
    """The typed view of a document (checked by :func:`parse_manifest`, or built from a record)."""
    return Manifest(
        model=document.get("model"),
        sampler=document.get("sampler"),
        schedule=schedule,
        dtype=str(document.get("dtype")),
        cfg=bool(document.get("cfg")),
        fuse=bool(document.get("fuse")),
        cuda_graph=bool(document.get("cuda_graph")),
        hoist=bool(document.get("hoist")),
        hoist_limit_bytes=int(document.get("hoist_limit_bytes") or 0),
        backend=str(document.get("backend")),
        files=dict(document.get("files") or {}),
        document=document,
    )


def artifact_manifest(record: CompileRecord, files: dict[str, str]) -> Manifest:
    """The manifest of an artifact: format, versions, the compile ``record`` (its
    :meth:`~l2c_compile.runtime.record.CompileRecord.to_dict`) and file hashes.

    A pure function of its inputs (no clock, no timings), so the same inputs give the same bytes.
    """
    return _typed({
        "format": ARTIFACT_FORMAT,
        "version": ARTIFACT_VERSION,
        "l2c_compile": __version__,
        "torch": torch.__version__,
        **record.to_dict(),
        "files": dict(files),
    }, record.schedule)


def manifest_text(manifest: Manifest) -> str:
    """How a manifest is written: indented JSON with a final newline."""
    return json.dumps(manifest.document, indent=1, default=str) + "\n"


def parse_manifest(document: Any, path: Path) -> Manifest:
    """Check a manifest document read from ``path`` (format, version, files, dtype, flags, schedule); type it.

    Raises :class:`L2CError` (one line) for a document this l2c-compile cannot act on; the file
    hashes are checked against the folder by :func:`~l2c_compile.runtime.artifact.read_manifest`.
    """
    if not isinstance(document, dict) or document.get("format") != ARTIFACT_FORMAT:
        raise L2CError(f"{path} is not an l2c-compile artifact manifest")
    if document.get("version") != ARTIFACT_VERSION:
        raise L2CError(
            f"artifact format version {document.get('version')} is not supported "
            f"(this l2c-compile reads version {ARTIFACT_VERSION}); recompile it"
        )
    files = document.get("files")
    if not isinstance(files, dict) or set(files) != set(FILES):
        raise L2CError(f"{path} must list exactly the files {', '.join(FILES)}")
    root = path.parent
    if document.get("dtype") not in DTYPE_NAMES:
        raise L2CError(f"artifact {root}: manifest.json has an unknown dtype {document.get('dtype')!r}")
    for key in FLAGS:
        if not isinstance(document.get(key), bool):
            raise L2CError(f"artifact {root}: manifest.json field {key!r} must be true or false")
    limit = document.get("hoist_limit_bytes")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise L2CError(f"artifact {root}: manifest.json field 'hoist_limit_bytes' must be a whole number of bytes")
    if document.get("backend") not in BACKENDS:
        raise L2CError(
            f"artifact {root}: manifest.json has an unknown backend {document.get('backend')!r} "
            f"(expected one of {', '.join(BACKENDS)})"
        )
    try:
        schedule = Schedule.from_dict(document["schedule"]) if document.get("schedule") else None
    except KeyError as exc:
        raise L2CError(f"artifact {root}: manifest.json's schedule lacks {exc}") from None
    return _typed(document, schedule)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
