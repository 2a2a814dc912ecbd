"""Shared CLI plumbing: consoles, one-line errors, output formats."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import typer
from rich.console import Console

from l2c_compile.errors import L2CError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(str, Enum):
    """How a command prints its result."""

    rich = "rich"
    json = "json"


def cli_errors(fn: F) -> F:
    """Turn an L2CError into one line on stderr and exit status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except L2CError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (plain, machine-readable)."""
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))
