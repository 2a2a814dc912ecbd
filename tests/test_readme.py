"""Every README snippet is tested (issue 12, item 12).

Python blocks run as they are, in a scratch folder. Shell blocks cannot all run here (they
install packages, train on ImageNet, need a GPU), so every ``l2c-compile`` command line in them
is checked against the real command-line interface: the command exists and knows every option
it is given. The commands themselves are exercised by the CLI tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from l2c_compile.cli.main import app

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)  # "```python excerpt": shown, not run
SHELL_BLOCKS = re.findall(r"```(?:bash|sh|console)\n(.*?)```", TEXT, re.S)


def _command_lines() -> list[str]:
    lines, pending = [], ""
    for block in SHELL_BLOCKS:
        for raw in block.splitlines():
            line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
            if pending:
                line, pending = pending + " " + line.strip(), ""
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            for part in re.split(r"&&|;", line):
                part = part.strip()
                if part.startswith("l2c-compile ") or " -m l2c_compile.cli.main " in part:
                    lines.append(part)
    return lines


COMMANDS = _command_lines()


def test_readme_has_snippets() -> None:
    assert PYTHON_BLOCKS and len(COMMANDS) >= 10


@pytest.mark.parametrize(
    "code", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))]
)
def test_python_snippet_runs(code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


@pytest.mark.parametrize("line", COMMANDS)
def test_shell_command_matches_the_cli(line: str) -> None:
    words = shlex.split(line)
    words = (
        words[words.index("l2c-compile") + 1 :]
        if "l2c-compile" in words
        else words[words.index("l2c_compile.cli.main") + 1 :]
    )
    cmd = typer.main.get_command(app)  # typer's (vendored) click objects: duck-typed here
    while getattr(cmd, "commands", None) and words and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        assert sub is not None, f"unknown command {words[0]!r} in: {line}"
        cmd, words = sub, words[1:]
    known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for word in words:
        if word.startswith("-") and not re.fullmatch(r"-\d.*", word):
            name = word.split("=", 1)[0]
            assert name in known, f"{name} is not an option of {cmd.name!r} ({line})"
