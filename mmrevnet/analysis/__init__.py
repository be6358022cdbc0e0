"""Measurement tools shared by the tests and the benchmark scripts.

* :mod:`.memory`: bytes of distinct storages saved for backward
  (:class:`SavedTensorCounter`, :func:`saved_bytes`) and CUDA peak memory
  (:func:`cuda_peak_memory`).
* :mod:`.drift`: reconstruction drift of memory-saving momentum stages
  (:func:`measure_drift`; ``python -m mmrevnet.analysis.drift`` prints the
  table). Imported lazily, so that running it with ``-m`` works cleanly.
"""

from .memory import (
    SavedStorage,
    SavedTensorCounter,
    cuda_peak_memory,
    saved_bytes,
)

_DRIFT = ('measure_drift', 'bottleneck_branch', 'format_table')

__all__ = [
    'SavedTensorCounter',
    'SavedStorage',
    'saved_bytes',
    'cuda_peak_memory',
    *_DRIFT,
]


def __getattr__(name):
    if name in _DRIFT:
        from . import drift

        return getattr(drift, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
