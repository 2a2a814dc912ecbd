"""`l2c-compile models`: every registered architecture with its size and cost."""

from __future__ import annotations

import typer
from rich.table import Table

from l2c_compile.cli.common import OutputFormat, cli_errors, console, print_json

_SI = ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "k"))


def human(n: int | float, unit: str = "", digits: int = 3) -> str:
    """``n`` with an SI prefix, e.g. ``human(2_287_871_262_720, "MACs") == "2.288 TMACs"``."""
    for scale, prefix in _SI:
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


@cli_errors
def models(
    fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format", help="rich or json"),
) -> None:
    """List every registry model: sizes, parameters and MACs of one forward pass per image."""
    from l2c_compile.metrics.macs import model_table

    with console.status("counting parameters and MACs…"):
        rows = model_table()
    if fmt == OutputFormat.json:
        print_json(rows)  # exact integers for machines
        return
    # A borderless table so every column fits an 80-column terminal.
    table = Table(
        title="l2c-compile models",
        caption="MACs: one forward pass, one image, thop convention (Linear/Conv, no CFG)",
        box=None,
        pad_edge=False,
    )
    for col in ("name", "family", "depth", "hidden", "heads", "patch", "tokens", "params", "MACs"):
        table.add_column(
            col, justify="left" if col in ("name", "family") else "right", no_wrap=True
        )
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            *(str(r[k]) for k in ("depth", "hidden", "heads", "patch", "tokens")),
            human(r["params"], digits=1),
            human(r["macs_per_forward"]),
        )
    console.print(table)
