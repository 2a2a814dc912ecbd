"""`l2c-compile env`: versions, devices, the hardware features and what their absence means here."""

from __future__ import annotations

import importlib.metadata
import platform

import torch
import typer
from rich.table import Table

from l2c_compile.cli.common import OutputFormat, cli_errors, console, print_json, print_labelled
from l2c_compile.runtime import features
from l2c_compile.version import __version__


def environment() -> dict[str, object]:
    """Collect the facts `env` prints: versions, devices, ``feature_<name>`` for every feature of
    :mod:`l2c_compile.runtime.features`, where the Triton kernels run (``triton_kernels_on_cuda``: compiled
    for the GPU; ``triton_interpreter_on_cpu``: in Triton's interpreter, ``TRITON_INTERPRET=1``)
    and ``notes``: what the missing features mean here, one line each
    (:func:`~l2c_compile.runtime.features.machine_notes`).

    Raises :class:`L2CError` when ``L2C_DISABLE_FEATURES`` names no feature.
    """
    from l2c_compile.kernels._common import INTERPRET

    features.check_switch()
    cuda = features.has("cuda")
    info: dict[str, object] = {
        "l2c_compile": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": cuda,
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "cpu_threads": torch.get_num_threads(),
    }
    for pkg in ("triton", "diffusers", "torchmetrics", "matplotlib", "safetensors"):
        # Read versions from package metadata: importing diffusers & co. just to ask takes seconds.
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    info["triton_kernels_on_cuda"] = features.has("triton") and cuda
    info["triton_interpreter_on_cpu"] = features.has("triton") and INTERPRET
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info.update({f"feature_{name}": usable for name, usable in features.report().items()})
    info["notes"] = features.machine_notes(INTERPRET)
    return info


@cli_errors
def env(fmt: OutputFormat = typer.Option(OutputFormat.rich, "--format", help="rich or json")) -> None:
    """Show versions, devices, the hardware features, and the slower paths this machine takes."""
    info = environment()
    if fmt == OutputFormat.json:
        print_json(info)
        return
    table = Table(title="l2c-compile environment", show_header=False)
    for key, value in info.items():
        if key != "notes":  # printed below, one line each
            table.add_row(key, "-" if value is None else str(value))
    console.print(table)
    for note in info["notes"]:
        print_labelled("note:", note, "bold yellow", on=console)
