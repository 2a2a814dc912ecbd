"""Load diffusers models and pipelines from local folders (never the hub), as adapters.

A folder is either a whole pipeline (``model_index.json``; the model is its ``transformer/``) or a
model folder (``config.json`` with ``_class_name``). Anything else is one L2CError line naming what
was found.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from l2c_compile.diffusers.quiet import quiet
from l2c_compile.diffusers.trust import check_folder
from l2c_compile.errors import L2CError
from l2c_compile.inputs import read_json
from l2c_compile.limits import check_model_size

# → adapter (dit.py, pixart.py, sd3.py, flux.py, wan.py; the class each family declares, families/builtin.py)
ADAPTED = {"DiTTransformer2DModel": "DiT", "PixArtTransformer2DModel": "PixArt", "SD3Transformer2DModel": "SD3",
           "FluxTransformer2DModel": "FLUX", "WanTransformer3DModel": "Wan"}
PIPELINES = ("DiTPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline", "StableDiffusion3Pipeline", "FluxPipeline",
             "WanPipeline")


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "diffusers config")
    if not isinstance(data, dict):
        raise L2CError(f"{path} is not a JSON object")
    return data


def model_folder(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """``(folder of the model, its diffusers class)`` for a pipeline or model folder; L2CError when
    ``path`` holds no supported diffusers model (the message names what it holds), could make
    diffusers run code from it (:func:`~l2c_compile.diffusers.trust.check_folder`), or configures
    a model of no sane size."""
    root = Path(path)
    if not root.is_dir():
        raise L2CError(f"{root} is not a folder (expected a diffusers pipeline or model folder)")
    check_folder(root)
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        entry = index.get("transformer")
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise L2CError(f"{root} is a diffusers {index.get('_class_name', 'pipeline')} without a transformer; "
                           f"supported: {', '.join(ADAPTED)}")
        root = root / "transformer"
        index_checked = index
    else:
        index_checked = None
    if not (root / "config.json").is_file():
        found = ", ".join(sorted(p.name for p in root.iterdir())[:5]) if root.is_dir() else "nothing"
        raise L2CError(f"{root} is not a diffusers model folder (no model_index.json or config.json; "
                       f"found {found or 'nothing'})")
    config = _read_json(root / "config.json")
    cls = str(config.get("_class_name", "no _class_name"))
    if cls not in ADAPTED:
        raise L2CError(f"{root} holds a diffusers {cls}; supported: {', '.join(ADAPTED)}")
    check_config_size(cls, config, f"{root / 'config.json'}")
    if index_checked is not None:  # a pipeline one compiled sampler cannot run (Wan 2.2's two experts)
        from l2c_compile.families import family_for_diffusers

        family = family_for_diffusers(cls)
        if family is not None:
            family.check_pipeline(index_checked)
    return root, cls


def check_config_size(cls: str, config: dict[str, Any], what: str) -> None:
    """L2CError unless a ``cls`` config builds a model of sane size (every integer bounded, depth,
    width and parameters estimated; :func:`~l2c_compile.limits.check_model_size`), checked
    before diffusers allocates anything."""
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    ints = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (heads, head_dim))
    side, patch = config.get("sample_size"), config.get("patch_size")
    sized = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (side, patch))
    classes = config.get("num_embeds_ada_norm") if cls != "PixArtTransformer2DModel" else 0
    depth = config.get("num_layers")
    if cls == "FluxTransformer2DModel":  # double- and single-stream blocks (the family's depth_keys)
        single = config.get("num_single_layers", 0)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (depth, single)):
            depth += single  # else the bad value is reported as it is
    check_model_size(config, what, depth=depth, width=heads * head_dim if ints else None,
                     tokens=(side // patch) ** 2 if sized else 0,
                     classes=classes if isinstance(classes, int) else 0)


def load_diffusers(path: str | os.PathLike[str], *, text_len: int | None = None,
                   size: dict[str, int] | None = None):
    """The adapted model (:class:`~l2c_compile.diffusers.dit.DiffusersDiT`,
    :class:`~l2c_compile.diffusers.pixart.DiffusersPixArt`,
    :class:`~l2c_compile.diffusers.sd3.DiffusersSD3`, :class:`~l2c_compile.diffusers.flux.DiffusersFlux`,
    :class:`~l2c_compile.diffusers.wan.DiffusersWan`: the adapter its family declares) of a local
    pipeline or model folder, in eval mode, loaded offline; L2CError for anything unsupported.
    ``text_len``: a text-conditioned model's prompt length (default: what the folder's pipeline
    encodes to, :func:`default_text_len`); ``size``: the sample size of a family whose config does
    not fix it (Wan: ``num_frames``, ``height``, ``width``; ``DiffusersSpec.size``)."""
    from l2c_compile.families import family_for_diffusers

    folder, cls = model_folder(path)
    family = family_for_diffusers(cls)
    if family is None:
        raise L2CError(f"no model family declares the diffusers class {cls!r}")
    import diffusers

    try:
        with quiet():
            transformer = load_model(getattr(diffusers, cls), folder)
    except L2CError:
        raise
    except Exception as exc:  # diffusers raises many types for a bad folder
        raise L2CError(f"cannot load {cls} from {folder}: {str(exc).splitlines()[0]}") from None
    if family.conditioning == "text":
        return family.adapter_class()(transformer.eval(), text_len=text_len or default_text_len(path), **(size or {}))
    return family.adapter_class()(transformer.eval())


def default_text_len(path: str | os.PathLike[str]) -> int:
    """The prompt length a text-to-image folder's pipeline encodes to, as its adapter reads it
    (``pipeline_text_len``: PixArt's ``max_sequence_length`` default, 120 or 300; SD3's CLIP
    tokens + T5 tokens, 77 + 256; FLUX's T5 tokens, 512); the adapter's default for a bare model
    folder."""
    from l2c_compile.families import family_for_diffusers

    _, cls = model_folder(path)
    family = family_for_diffusers(cls)
    if family is None:
        raise L2CError(f"no model family declares the diffusers class {cls!r}")
    return int(family.adapter_class().pipeline_text_len(Path(path)))


def load_pipeline(path: str | os.PathLike[str]):
    """A whole ``DiTPipeline`` / ``PixArtAlphaPipeline`` / ``PixArtSigmaPipeline`` /
    ``StableDiffusion3Pipeline`` / ``FluxPipeline`` / ``WanPipeline`` from a local folder (offline);
    L2CError naming what was found."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise L2CError(f"{root} is not a diffusers pipeline folder (no model_index.json)")
    cls = str(_read_json(root / "model_index.json").get("_class_name"))
    if cls not in PIPELINES:
        raise L2CError(f"{root} holds a diffusers {cls}; supported pipelines: {', '.join(PIPELINES)}")
    folder, model_cls = model_folder(root)
    import diffusers

    try:
        with quiet():
            pipeline = getattr(diffusers, cls)
            model_class = getattr(diffusers, model_cls)
            if _needs_accelerate(model_class):  # the transformer loads here, the rest as diffusers loads it
                return pipeline.from_pretrained(root, transformer=load_model(model_class, folder),
                                                local_files_only=True)
            return pipeline.from_pretrained(root, local_files_only=True)
    except L2CError:
        raise
    except Exception as exc:  # diffusers raises many types for a bad folder
        raise L2CError(f"cannot load {cls} from {root}: {str(exc).splitlines()[0]}") from None


def _needs_accelerate(model_class: Any) -> bool:
    """Whether diffusers' ``from_pretrained`` cannot load ``model_class`` here: a model that keeps
    modules in float32 (``_keep_in_fp32_modules``: Wan) loads only with ``low_cpu_mem_usage``,
    which needs the ``accelerate`` package (``ModelMixin.from_pretrained``)."""
    from diffusers.utils import is_accelerate_available

    return bool(getattr(model_class, "_keep_in_fp32_modules", None)) and not is_accelerate_available()


def load_model(model_class: Any, folder: Path) -> Any:
    """``model_class.from_pretrained(folder)`` offline, or, where that needs the missing
    ``accelerate`` (:func:`_needs_accelerate`), the same model built from the folder's config and
    given its safetensors weights (one file or a sharded index), strictly: every weight present,
    none extra. L2CError for a folder without safetensors weights or whose weights do not fit."""
    if not _needs_accelerate(model_class):
        return model_class.from_pretrained(folder, local_files_only=True)
    from safetensors.torch import load_file

    name = "diffusion_pytorch_model.safetensors"
    if (folder / name).is_file():
        files = [folder / name]
    elif (folder / f"{name}.index.json").is_file():
        index = _read_json(folder / f"{name}.index.json").get("weight_map")
        if not isinstance(index, dict) or not all(isinstance(v, str) and "/" not in v for v in index.values()):
            raise L2CError(f"{folder / (name + '.index.json')} has no valid weight_map")
        files = [folder / v for v in sorted(set(index.values()))]
    else:
        raise L2CError(f"{folder} has no {name} (a model that keeps modules in float32 loads from safetensors "
                       "without the accelerate package)")
    model = model_class.from_config(model_class.load_config(folder))
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an unknown {unexpected[0]}"
        raise L2CError(f"{folder}'s weights do not fit its {model_class.__name__} config: it {what}")
    return model.eval()
