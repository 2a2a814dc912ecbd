"""Shared benchmark plumbing: environment record, timing, JSON lines, markdown tables."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from l2c_compile.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def git_sha() -> str:
    """The checkout's commit (or 'unknown')."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: str) -> dict[str, Any]:
    """Device name and software versions, recorded in every result line."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    return {"device": device, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "git": git_sha(), "python": platform.python_version()}


def sync(device: str) -> None:
    """Wait for queued device work (CUDA); nothing on CPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn: Callable[[], Any], *, device: str, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median and spread of ``fn``'s wall time over ``repeats`` runs after ``warmup`` runs.

    The first warm-up run is reported separately (``first_s``): it includes compilation.
    """
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "first_s": first, "repeats": repeats}


def pipeline_images(output: Any) -> Any:
    """What a diffusers pipeline call returned, as an array: an image pipeline's ``.images``
    (N, H, W, 3), a video pipeline's ``.frames`` (N, F, H, W, 3)."""
    return output.images if hasattr(output, "images") else output.frames


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append result rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, default=str) + "\n")


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A markdown table of ``rows`` with (key, header) columns."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _ in columns:
            v = r.get(key)
            cells.append(f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` and of the partial file a killed run left beside it (none when
    neither exists)."""
    rows: list[dict[str, Any]] = []
    for p in (path, path.with_suffix(".partial.jsonl")):
        if p.is_file():
            rows += [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def append_text(path: Path, text: str) -> None:
    """Append to a results file through an atomic rewrite (a killed run never leaves half a line)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text_atomic(path, old + text)
