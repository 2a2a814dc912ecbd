"""Shared CLI plumbing: consoles, one-line errors, output formats."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from l2c_compile.errors import L2CError

# Markup off: every string printed, table cell and title may hold user text (a path, a model
# name, a router's metadata) that rich would otherwise parse, crash on ("[/x]") or swallow
# ("[red]"). Styled labels are Text objects (print_labelled), never markup.
console = Console(log_path=False, markup=False)  # a log line names the event, not the source line
err_console = Console(stderr=True, markup=False)

F = TypeVar("F", bound=Callable[..., Any])

# What the guidance scale means differs per family (models/dit.py and models/uvit.py `guide`).
CFG_SCALE_HELP = (
    "guidance scale s (default: the model's). DiT: u + s·(c − u), so 1 = no guidance "
    "(DiT-XL/2 samples with 4); U-ViT: c + s·(c − u), so 0 = no guidance (U-ViT-H/2 uses 0.4)"
)


class OutputFormat(str, Enum):
    """How a command prints its result."""

    rich = "rich"
    json = "json"


def print_labelled(label: str, text: object, style: str = "bold red", *, on: Console | None = None) -> None:
    """Print ``label`` (styled) and ``text`` verbatim (never parsed as markup) on one line of
    ``on`` (default stderr)."""
    line = Text.assemble((label, style), " ", str(text))
    (err_console if on is None else on).print(line, highlight=False, soft_wrap=True)


def cli_errors(fn: F) -> F:
    """Turn an L2CError into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except L2CError as exc:
            print_labelled("error:", exc)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (plain, machine-readable)."""
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


@contextlib.contextmanager
def progress_bars(enabled: bool | None = None, *, on: Console | None = None) -> Iterator[Any]:
    """Draw the library's progress (stages, and bars for loops) inside the block.

    ``on``: the console to draw on (default stderr, so ``--format json`` keeps stdout clean; a
    command that logs to stdout meanwhile passes ``console``). ``enabled`` None: only when that
    console is a terminal, so pipes, logs and tests get no redraws. Yields the reporter (or
    None), whose ``stage`` can serve as a stage callback.
    """
    from l2c_compile.progress import RichReporter, reporting

    target = err_console if on is None else on
    if enabled is None:
        enabled = target.is_terminal
    if not enabled:
        with reporting(None):
            yield None
        return
    with RichReporter(target) as reporter, reporting(reporter):
        yield reporter


def print_fallbacks(notes: Sequence[str]) -> None:
    """Print, on stderr, the one line per slower path a compile took for lack of a CPU/GPU feature
    (``CompileRecord.fallbacks``, see :func:`l2c_compile.runtime.features.fallback_notes`)."""
    for note in notes:
        err_console.print(note, markup=False, highlight=False, soft_wrap=True)


# The sample size of a video --diffusers folder (Wan), whose config does not fix it.
NUM_FRAMES = typer.Option(None, "--num-frames", help="video models (a Wan --diffusers folder): frames per video "
                          "(default: the pipeline's 81)")
HEIGHT = typer.Option(None, "--height", help="FLUX.1 and Wan folders: image or video height in pixels (default: the "
                      "pipeline's: FLUX 1024, Wan 480)")
WIDTH = typer.Option(None, "--width", help="FLUX.1 and Wan folders: width in pixels (default: the pipeline's: FLUX "
                     "1024 (square), Wan 832)")


def sample_size(num_frames: int | None, height: int | None, width: int | None) -> dict[str, int]:
    """The ``--num-frames``, ``--height``, ``--width`` given, as a size dict (the others left to
    the model's defaults)."""
    given = {"num_frames": num_frames, "height": height, "width": width}
    return {k: v for k, v in given.items() if v is not None}
