"""Memory counters shared by the library, the tests and the benchmarks.

:mod:`.memory` counts the bytes of distinct storages saved for backward
(:class:`SavedTensorCounter`, :func:`saved_bytes`), measures the peak of
live bytes of a training step on any device (:func:`step_peak`) and reads
the CUDA peak memory (:func:`cuda_peak_memory`). :mod:`.planner` picks an
m-RevNet memory plan (kept blocks) for a budget of step peak memory from
those measurements.
"""

from .memory import (
    SavedStorage,
    SavedTensorCounter,
    StepPeak,
    cuda_peak_memory,
    saved_bytes,
    step_peak,
    step_peak_bytes,
)

__all__ = [
    'SavedTensorCounter',
    'SavedStorage',
    'saved_bytes',
    'cuda_peak_memory',
    'StepPeak',
    'step_peak',
    'step_peak_bytes',
]
