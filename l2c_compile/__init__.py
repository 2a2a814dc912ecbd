"""l2c-compile: Learning-to-Cache schedules compiled into specialized diffusion samplers."""

from __future__ import annotations

__version__ = "0.1.0"
