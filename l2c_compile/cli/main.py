"""The `l2c-compile` command line: a thin shell over the library.

Every command prints rich tables for people and ``--format json`` for machines; bad input is one
line on stderr and exit status 2 (see ``cli/common.py``).
"""

from __future__ import annotations

import typer

from l2c_compile.cli import (
    compile_cmd,
    demo_cmd,
    env_cmd,
    eval_cmd,
    interrupts,
    models_cmd,
    schedule_cmd,
    train_cmd,
)

app = typer.Typer(
    name="l2c-compile",
    help="Compile Learning-to-Cache schedules into specialized diffusion-transformer samplers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("env")(env_cmd.env)
app.command("models")(models_cmd.models)
app.add_typer(schedule_cmd.app, name="schedule")
app.command("compile")(compile_cmd.compile_cmd)
app.command("verify")(compile_cmd.verify_cmd)
app.command("sample")(compile_cmd.sample_cmd)
app.command("train")(train_cmd.train_cmd)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval_cmd)
interrupts.wrap_commands(app)  # Ctrl-C in any command: "interrupted: …" and exit 130


def main() -> None:
    """Run the command line (the console script enters through ``cli/entry.py``)."""
    interrupts.install()
    app()


if __name__ == "__main__":
    main()
