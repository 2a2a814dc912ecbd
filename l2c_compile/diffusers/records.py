"""What a text-conditioned adapter keeps in an artifact's model record, read back: :func:`prompt_record`.

Its own module so that the adapters (``pixart.py``, ``sd3.py``, ``flux.py``, ``wan.py``) import
nothing that imports them back (``spec.py`` loads folders through ``load.py``, which builds the
adapters).
"""

from __future__ import annotations

from typing import Any

from l2c_compile.errors import L2CError


def prompt_record(record: dict[str, Any], family: str, label: str) -> dict[str, int]:
    """The constructor arguments a text-to-image adapter keeps in an artifact's model record, under
    its family's name (``record["pixart"]``, ``["sd3"]``, ``["flux"]``, ``["wan"]``; written by
    :meth:`~l2c_compile.diffusers.spec.DiffusersSpec.to_dict`): ``text_len``, ``height``, ``width``
    and ``vae_scale_factor``. L2CError naming the model (``label``) when the prompt length or image
    size is missing."""
    rec = record.get(family)
    if not isinstance(rec, dict) or not all(isinstance(rec.get(k), int) for k in ("text_len", "height")):
        raise L2CError(f"artifact manifest's {label} record lacks its prompt length and image size")
    return {"text_len": rec["text_len"], "height": rec["height"], "width": rec.get("width", rec["height"]),
            "vae_scale_factor": rec.get("vae_scale_factor", 8)}
