"""Memory counters shared by the library, the tests and the benchmarks.

:mod:`.memory` counts the bytes of distinct storages saved for backward
(:class:`SavedTensorCounter`, :func:`saved_bytes`), measures the peak of
live bytes of a training step on any device (:func:`step_peak`) and reads
the CUDA peak memory (:func:`cuda_peak_memory`). :mod:`.planner` picks an
m-RevNet memory plan (kept blocks) for a budget of step peak memory from
those measurements.
"""

from . import memory
from .memory import *  # noqa: F401,F403  (the names of memory.__all__)

__all__ = list(memory.__all__)
