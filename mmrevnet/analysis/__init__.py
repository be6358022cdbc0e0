"""Memory counters shared by the library, the tests and the benchmarks.

:mod:`.memory` counts the bytes of distinct storages saved for backward
(:class:`SavedTensorCounter`, :func:`saved_bytes`) and reads the CUDA peak
memory (:func:`cuda_peak_memory`).
"""

from .memory import (
    SavedStorage,
    SavedTensorCounter,
    cuda_peak_memory,
    saved_bytes,
)

__all__ = [
    'SavedTensorCounter',
    'SavedStorage',
    'saved_bytes',
    'cuda_peak_memory',
]
