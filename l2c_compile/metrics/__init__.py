"""Metrics: thop-convention MACs (and, elsewhere in this package, sample quality)."""

from l2c_compile.metrics.macs import (
    MacCount,
    count_macs,
    forward_macs,
    measure_macs,
    model_table,
    sublayer_macs,
    trajectory_macs,
)

__all__ = [
    "MacCount",
    "count_macs",
    "forward_macs",
    "measure_macs",
    "model_table",
    "sublayer_macs",
    "trajectory_macs",
]
