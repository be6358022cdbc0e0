"""Memory-saving (recomputed, BN-exact) decode and auxiliary heads."""

from .memory_saving import (
    GRANULARITIES,
    disable_memory_saving,
    enable_memory_saving,
    is_memory_saving,
    recompute_units,
)
from .recompute import RecomputeFunction, recomputed_call
from .segmentor import MRevNetEncoderDecoder, enable_memory_saving_heads

__all__ = [
    'GRANULARITIES',
    'MRevNetEncoderDecoder',
    'RecomputeFunction',
    'disable_memory_saving',
    'enable_memory_saving',
    'enable_memory_saving_heads',
    'is_memory_saving',
    'recompute_units',
    'recomputed_call',
]
