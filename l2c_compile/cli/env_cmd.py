"""`l2c-compile env`: versions, devices, and whether Triton and CUDA are usable."""

from __future__ import annotations

import importlib.metadata
import platform

import torch
import typer
from rich.table import Table

from l2c_compile import features
from l2c_compile.cli.common import OutputFormat, cli_errors, console, print_json
from l2c_compile.version import __version__


def environment() -> dict[str, object]:
    """Collect the facts `env` prints."""
    info: dict[str, object] = {
        "l2c_compile": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_threads": torch.get_num_threads(),
    }
    for pkg in ("triton", "diffusers", "torchmetrics", "matplotlib", "safetensors"):
        # Read versions from package metadata: importing diffusers & co. just to ask takes seconds.
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["triton_usable"] = info["triton"] is not None and bool(info["cuda_available"])
    info["triton_interpreter_usable"] = info["triton"] is not None
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info.update({f"feature_{name}": usable for name, usable in features.report().items()})
    return info


@cli_errors
def env(fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format", help="rich or json")) -> None:
    """Show versions, devices, and whether Triton/CUDA can be used."""
    info = environment()
    if fmt == OutputFormat.json:
        print_json(info)
        return
    table = Table(title="l2c-compile environment", show_header=False)
    for key, value in info.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
