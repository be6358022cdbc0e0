"""Recomputation in the backward pass, BN-exact, for the heads and losses."""

from .heads import (
    GRANULARITIES,
    disable_memory_saving,
    enable_memory_saving,
    is_memory_saving,
    recompute_units,
)

__all__ = [
    'GRANULARITIES',
    'disable_memory_saving',
    'enable_memory_saving',
    'is_memory_saving',
    'recompute_units',
]
