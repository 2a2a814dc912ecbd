"""What a diffusers folder may name before anything of it is loaded: library classes only, no code.

diffusers' ``from_pretrained`` imports a component's class from a ``.py`` file in the folder when
``model_index.json`` names a custom one (``"scheduler": ["evil", "EvilScheduler"]`` with
``scheduler/evil.py``); releases before 0.38 ran it without ``trust_remote_code``
(GHSA-98h9-4798-4q5v), and transformers' ``auto_map`` does the same for its configs. A folder is
data, so :func:`check_folder` refuses, before any ``from_pretrained``:

* a pipeline ``_class_name`` that is not a pipeline class of diffusers itself;
* a component entry whose library is not ``diffusers`` or ``transformers`` (``[null, null]``, an
  absent optional component, is fine) or whose class is not a class of that library;
* a component config (any ``*.json`` in its folder, or a model folder's ``config.json``) with an
  ``auto_map``, or a ``_class_name`` that is not a class of diffusers or transformers;
* any ``.py``/``.pyc`` file anywhere in the folder tree.

``trust_remote_code`` is never passed. Each refusal is one :class:`L2CError` line naming the
component and why.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from l2c_compile.errors import L2CError
from l2c_compile.inputs import read_json

LIBRARIES = ("diffusers", "transformers")
CODE_SUFFIXES = (".py", ".pyc", ".pyo")
MAX_ENTRIES = 100_000  # files and folders walked; a pipeline has a few dozen


def library_class(library: str, name: Any) -> type | None:
    """The class ``name`` of ``library`` (diffusers or transformers) itself, or None: a plain
    attribute of the top-level module whose class is defined inside that library."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    from l2c_compile.diffusers.quiet import quiet

    try:
        with quiet():  # resolving a lazy pipeline class imports it, and transformers has advice to print
            module = importlib.import_module(library)
            cls = getattr(module, name, None)
    except Exception:  # a lazy attribute that cannot be imported is no class we know
        return None
    if not isinstance(cls, type) or not str(getattr(cls, "__module__", "")).startswith(f"{library}."):
        return None
    return cls


def _code_file(root: Path) -> Path | None:
    """The first ``.py``/``.pyc`` file under ``root`` (links followed, each folder once), or None."""
    seen: set[str] = set()
    count = 0
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        count += len(dirs) + len(files)
        if count > MAX_ENTRIES:
            raise L2CError(f"{root} holds more than {MAX_ENTRIES} files and folders; not a diffusers folder")
        for name in sorted(files) + sorted(dirs):
            if name.endswith(CODE_SUFFIXES):
                return Path(folder) / name
    return None


def _check_config(path: Path, component: str) -> None:
    """A component's JSON config may name no code (``auto_map``) and only library classes."""
    config = read_json(path, f"{component} config")
    if not isinstance(config, dict):
        return
    if "auto_map" in config:
        raise L2CError(f"{path}: component {component!r} names custom code (auto_map); refusing to load it")
    name = config.get("_class_name")
    if name is not None and not any(library_class(lib, name) for lib in LIBRARIES):
        raise L2CError(
            f"{path}: component {component!r} names class {name!r}, which is not a class of "
            f"{' or '.join(LIBRARIES)}; refusing to load it"
        )


def _check_component(root: Path, key: str, entry: Any) -> None:
    if not isinstance(entry, list) or len(entry) != 2:
        raise L2CError(f"{root}/model_index.json: component {key!r} must be [library, class], got {entry!r}")
    library, name = entry
    if library is None and name is None:
        return  # an optional component the pipeline was saved without
    if library not in LIBRARIES:
        raise L2CError(
            f"{root}/model_index.json: component {key!r} comes from {library!r}, not from "
            f"{' or '.join(LIBRARIES)} (a custom component runs code from the folder); refusing to load it"
        )
    if library_class(library, name) is None:
        raise L2CError(
            f"{root}/model_index.json: component {key!r} names {name!r}, which is not a class of "
            f"{library}; refusing to load it"
        )
    folder = root / key
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            _check_config(path, key)


def check_folder(root: Path) -> None:
    """Refuse a diffusers pipeline or model folder that could make ``from_pretrained`` run code
    from it (see the module docstring); L2CError naming the component and why."""
    index_path = root / "model_index.json"
    if index_path.exists():
        _check_index(root, index_path)
    elif (root / "config.json").exists():
        _check_config(root / "config.json", root.name)
    code = _code_file(root)
    if code is not None:
        raise L2CError(
            f"{root} holds Python code ({code.relative_to(root)}), which diffusers could import while "
            "loading; refusing to load a folder with code in it"
        )


def _check_index(root: Path, index_path: Path) -> None:
    index = read_json(index_path, "diffusers model_index.json")
    if not isinstance(index, dict):
        raise L2CError(f"{index_path} is not a JSON object")
    pipeline = index.get("_class_name")
    cls = library_class("diffusers", pipeline)
    from diffusers import DiffusionPipeline

    if cls is None or not issubclass(cls, DiffusionPipeline):
        raise L2CError(
            f"{index_path}: _class_name {pipeline!r} is not a diffusers pipeline class; refusing to load it"
        )
    for key, entry in index.items():
        if not key.startswith("_") and isinstance(entry, list | tuple | dict):
            _check_component(root, key, entry)
