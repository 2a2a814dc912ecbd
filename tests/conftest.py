"""Test-suite settings: one intra-op thread per worker (the suite runs with pytest-xdist)."""

from __future__ import annotations

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
