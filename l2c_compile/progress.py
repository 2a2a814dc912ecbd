"""Progress of long loops: the library announces work, the CLI draws rich progress bars.

Library code marks a loop with :func:`task` (a description, a total and a unit) and calls
:func:`advance` as it goes, or wraps a sampler in :func:`counting_model_calls` so that every
model call advances the current task. Nothing is drawn unless a reporter is installed with
:func:`reporting`; the CLI installs :class:`RichReporter`, which shows one bar per task with
the count done out of the total, the rate, the elapsed time and the time left, plus a spinner
line for the current stage. Library callers see no output and pay nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from torch import nn

__all__ = [
    "Reporter",
    "RichReporter",
    "advance",
    "bar_columns",
    "counting_model_calls",
    "reporting",
    "stage",
    "task",
]


class Reporter(Protocol):
    """What draws progress: stages (one line of text) and tasks (a count towards a total)."""

    def stage(self, message: str) -> None:
        """The current stage of a longer job, in words."""

    def start(self, description: str, total: int | None, unit: str) -> None:
        """A loop of ``total`` units begins (None: total unknown)."""

    def advance(self, n: int) -> None:
        """``n`` more units of the current loop are done."""

    def finish(self) -> None:
        """The current loop is over."""


_REPORTER: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar(
    "l2c_progress_reporter", default=None
)


@contextlib.contextmanager
def reporting(reporter: Reporter | None) -> Iterator[Reporter | None]:
    """Install ``reporter`` for the code inside the ``with`` block (None: report nothing)."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)


def stage(message: str) -> None:
    """Announce a stage of a longer job (no-op without a reporter)."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter.stage(message)


@contextlib.contextmanager
def task(description: str, total: int | None, unit: str = "steps") -> Iterator[None]:
    """Mark a loop of ``total`` units; :func:`advance` inside it moves its bar."""
    reporter = _REPORTER.get()
    if reporter is None:
        yield
        return
    reporter.start(description, total, unit)
    try:
        yield
    finally:
        reporter.finish()


def advance(n: int = 1) -> None:
    """``n`` more units of the current task are done (no-op without a reporter)."""
    reporter = _REPORTER.get()
    if reporter is not None:
        reporter.advance(n)


@contextlib.contextmanager
def counting_model_calls(target: Any) -> Iterator[None]:
    """Advance the current task once per model call made by ``target`` inside the block.

    ``target`` is a :class:`~l2c_compile.runtime.sampler.CompiledSampler` (its step graphs are counted)
    or an ``nn.Module`` called once per model call (the reference executor's model; a forward
    hook counts it). Without a reporter nothing is wrapped. A CUDA-graph replay runs no Python
    per step, so it is counted only while it is being captured.
    """
    if _REPORTER.get() is None:
        yield
        return
    steps = getattr(target, "steps", None)
    if isinstance(steps, list) and steps and all(callable(s) for s in steps):
        target.steps = [_ticking(s) for s in steps]
        try:
            yield
        finally:
            target.steps = steps
        return
    if not isinstance(target, nn.Module):
        raise TypeError(f"cannot count the model calls of {type(target).__name__}")
    handle = target.register_forward_hook(lambda *_: advance(1))
    try:
        yield
    finally:
        handle.remove()


def _ticking(fn: Callable[..., Any]) -> Callable[..., Any]:
    def step(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        advance(1)
        return out

    return step


# ---------------------------------------------------------------------------------------------
# The rich reporter (CLI)
# ---------------------------------------------------------------------------------------------


def bar_columns(unit: str = "steps") -> list[Any]:
    """The columns of every bar: description, bar, done/total unit, rate, elapsed, time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Units per second (or seconds per unit when slower than one a second)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            u = task.fields.get("unit", unit)
            if not speed:
                return Text(f"– {u}/s", style="progress.data.speed")
            text = f"{speed:.2f} {u}/s" if speed >= 1 else f"{1 / speed:.2f} s/{_singular(u)}"
            return Text(text, style="progress.data.speed")

    return [
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}", markup=False),
        RateColumn(),
        TextColumn("·"),
        TimeElapsedColumn(),
        TextColumn("elapsed ·"),
        TimeRemainingColumn(),
        TextColumn("left"),
    ]


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") else unit


class RichReporter:
    """Rich progress bars (and a spinner line for the stage) on ``console``, usually stderr.

    Use as a context manager around the work, inside :func:`reporting`. Finished bars stay on
    screen, so a log of a long job shows how long each loop took.
    """

    def __init__(self, console: Any) -> None:
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self.console = console
        self._bars = Progress(*bar_columns(), console=console)
        self._stage = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), console=console)
        self._stage_task: Any = None
        self._task: Any = None
        self._total: int | None = None
        self._done = 0
        self._live: Any = None

    def __enter__(self) -> RichReporter:
        from rich.console import Group
        from rich.live import Live

        self._live = Live(
            Group(self._bars, self._stage),
            console=self.console,
            refresh_per_second=8,
            transient=False,
        )
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stage_task is not None:
            self._stage.remove_task(self._stage_task)
            self._stage_task = None
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def stage(self, message: str) -> None:
        """Show ``message`` beside a spinner (replacing the previous stage)."""
        if self._stage_task is None:
            self._stage_task = self._stage.add_task(message, total=None)
        else:
            self._stage.update(self._stage_task, description=message)

    def start(self, description: str, total: int | None, unit: str) -> None:
        """Add a bar for a new loop."""
        self._task = self._bars.add_task(description, total=total, unit=unit)
        self._total, self._done = total, 0

    def advance(self, n: int) -> None:
        """Move the current bar (never past its total: a CUDA-graph capture runs warm-ups)."""
        if self._task is not None:
            if self._total is not None:
                n = max(0, min(n, self._total - self._done))
            self._done += n
            self._bars.advance(self._task, n)

    def finish(self) -> None:
        """Stop the current bar's clock (it stays on screen)."""
        if self._task is not None:
            self._bars.stop_task(self._task)
            self._task = None
