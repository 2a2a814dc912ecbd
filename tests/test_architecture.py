"""The package's shape: no import cycles, and the library never imports the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "l2c_compile"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Every package module ``path`` imports, at module level or inside functions; imports under
    ``if TYPE_CHECKING:`` run for the type checker only and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "l2c_compile":  # every module runs the package __init__ anyway
                found.add(name)
    return found


def test_no_import_cycles():
    known = _modules()
    graph = {m: _imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_library_never_imports_the_cli():
    known = _modules()
    for name, path in known.items():
        if name.startswith("l2c_compile.cli"):
            continue
        cli = sorted(d for d in _imports(path, known) if d.startswith("l2c_compile.cli"))
        assert not cli, f"{name} imports {cli}"


def test_shared_vocabulary_is_defined_once():
    import re

    wanted = {"SublayerKey": r"^SublayerKey\s*=", "Mask": r"^Mask\s*=", "MODES": r"^\s*MODES\b.*=",
              "Kind": r"^Kind\s*="}
    for name, pattern in wanted.items():
        where = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if re.search(pattern, p.read_text(encoding="utf-8"), re.MULTILINE)]
        assert where == ["families/vocabulary.py"], (name, where)


def test_importing_the_package_leaves_the_fmnist_training_code_unloaded():
    """``import l2c_compile`` and the registry list the reference models from ``fmnist/specs.py``
    without loading their training side (data reading, the training loop)."""
    import subprocess
    import sys

    code = (
        "import sys, l2c_compile, l2c_compile.models.registry as r; "
        "assert 'DiT-FMNIST' in r.MODELS, sorted(r.MODELS); "
        "print(sorted(m for m in sys.modules if m.startswith('l2c_compile.fmnist')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent)
    loaded = eval(out.stdout)  # a printed list of module names
    for training in ("l2c_compile.fmnist.train_model", "l2c_compile.fmnist.data", "l2c_compile.fmnist.classifier"):
        assert training not in loaded, loaded


def test_the_fmnist_modules_import_first_without_a_cycle():
    """``fmnist.classifier`` imported before anything else (torchrun drivers do) loads, and the
    registry it reaches still lists the reference models."""
    import subprocess
    import sys

    code = ("import l2c_compile.fmnist.classifier, l2c_compile.models.registry as r; "
            "assert 'DiT-FMNIST' in r.MODELS")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-1000:]


def test_the_readme_layout_names_every_top_level_module_and_package():
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Layout")
    block = readme[readme.index("```", start) + 3:]
    block = block[: block.index("```")]
    names = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    names += [f"{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()]
    # A top-level name stands on its own: ``samplers/base.py`` does not name a top-level base.py.
    missing = sorted(n for n in names if not re.search(rf"(?<![\w/.]){re.escape(n)}", block))
    assert not missing, f"README's Layout block does not name {missing}"


def test_phases_import_downwards():
    """The layout's phases (README, Layout): declarations and samplers stand on the foundations
    only; compile time and run time never reach up into the applications, router training or
    the CLI; the applications are the CLI's alone."""
    foundations = {"errors", "version", "io", "inputs", "limits", "filekind", "progress", "images"}
    allowed_below = {
        "families": foundations,
        "samplers": foundations,
    }
    never = {
        "compiler": {"apps", "router", "cli"},
        "runtime": {"apps", "router", "cli"},
        "kernels": {"apps", "router", "cli", "compiler"},
        "families": {"apps", "router", "cli", "compiler", "runtime"},
    }
    known = _modules()

    def phase(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    for name, path in known.items():
        here = phase(name)
        reached = {phase(d) for d in _imports(path, known)} - {here, ""}
        if here in allowed_below:
            assert reached <= allowed_below[here], f"{name} imports {sorted(reached - allowed_below[here])}"
        assert not reached & never.get(here, set()), f"{name} imports {sorted(reached & never[here])}"
        if here not in ("apps", "cli"):
            assert "apps" not in reached, f"{name} imports the applications"
