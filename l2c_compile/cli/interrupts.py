"""Ctrl-C in any command, at any moment: one line, "interrupted: <what was left>", and exit 130.

No traceback, and nothing half-written: every output goes through ``io``'s atomic writers, which
remove their unfinished output on the way out and record what became of each target; the line
says it (e.g. "art is as it was", "r.safetensors was not created"), after the interrupted
operation's own note if it has one (``train``: where its last checkpoint stands).

The console script installs :func:`install` before importing anything heavy (``cli/entry.py``), so
an interrupt while torch is still importing is caught too. The SIGINT handler also records that
an interrupt came: a library that swallows the KeyboardInterrupt (an import cut short, then
retried and failing with an unrelated-looking error) cannot turn it into a false error message,
because any exception raised after the interrupt is reported as the interrupt.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C
_requested = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT through :func:`_on_sigint` (records it, then raises KeyboardInterrupt)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)


def requested() -> bool:
    """Whether SIGINT arrived since :func:`install`."""
    return _requested


def interrupted_line(exc: BaseException | None) -> str:
    """The one line for an interrupt: the operation's note (if any), then what each output is now."""
    from l2c_compile.io import interrupted_outputs

    parts = [note] if (note := getattr(exc, "note", None)) else []
    outputs = interrupted_outputs()
    parts.append("; ".join(outputs) if outputs else "nothing was written")
    return "interrupted: " + "; ".join(parts)


def exit_interrupted(exc: BaseException | None) -> NoReturn:
    """Print :func:`interrupted_line` on stderr (plain text) and exit with status 130."""
    sys.stderr.write(interrupted_line(exc) + "\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_INTERRUPTED)


def interruptible(fn: F) -> F:
    """Wrap a command: Ctrl-C (or any error raised after one) ends it with the interrupt line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from l2c_compile.io import interrupted_outputs

        interrupted_outputs()  # forget what an earlier command in this process left
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt as exc:
            exit_interrupted(exc)
        except Exception as exc:
            if requested():  # the interrupt surfaced as another error (e.g. an import cut short)
                exit_interrupted(exc)
            raise

    return wrapper  # type: ignore[return-value]


def wrap_commands(app: Any) -> None:
    """Apply :func:`interruptible` to every command of a typer app and of its sub-apps."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_l2c_interruptible", False):
            info.callback = interruptible(info.callback)
            info.callback._l2c_interruptible = True  # type: ignore[attr-defined]
    for group in app.registered_groups:
        if group.typer_instance is not None:
            wrap_commands(group.typer_instance)
