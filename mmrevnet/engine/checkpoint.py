"""Load mmengine Runner checkpoints with torch's ``weights_only`` check on.

torch >= 2.6 loads files with ``weights_only=True``: its unpickler builds
tensors, containers and plain values, and any other global must be on an
allowlist. mmengine 0.10 checkpoints name a few more: the ``message_hub``
keeps :class:`~mmengine.logging.HistoryBuffer` objects holding numpy arrays,
numpy scalars, and the buffer's statistics methods, which pickle writes as
``getattr(HistoryBuffer, 'min')``. Allowing those globals as they are would
be unsafe, so :func:`runner_checkpoint_globals` allows, for the duration of
a ``with`` block only, stand-ins registered under the names the pickle uses.
Each accepts exactly what mmengine writes and refuses anything else:

* ``builtins.getattr`` -> :func:`_history_buffer_method`. Returns one of
  ``HistoryBuffer.min/max/mean/current`` and nothing else. The real
  ``getattr`` reaches every module's globals (``fn.__globals__``) and the
  builtins module (``getattr.__self__``); the stand-in reaches four fixed
  functions and cannot call them.
* ``mmengine.logging.history_buffer.HistoryBuffer`` ->
  :class:`_LoadedHistoryBuffer`. Its ``__setstate__`` checks the state
  (known keys, ``max_length`` an int, 1-D numeric arrays of equal length,
  statistics methods that are the class's own under their own names),
  then turns the object into a plain ``HistoryBuffer``. mmengine's
  ``__setstate__`` merges the statistics into a dict shared by every
  buffer in the process, so unchecked state could replace them.
* ``numpy.dtype`` -> :class:`_DtypeSpec`. Accepts a bool, integer,
  floating or complex type code and the state numpy writes for it. Object,
  structured, sub-array, string and datetime types are refused: only these
  plain types make raw bytes safe to reinterpret.
* ``numpy._core.multiarray._reconstruct`` -> :func:`_empty_array`, and
  ``numpy.ndarray`` -> :class:`_PickledArray`. The array's ``__setstate__``
  accepts only a checked dtype and raw bytes of exactly the declared size,
  then lets numpy copy them. ``numpy.ndarray`` cannot be called.
* ``numpy._core.multiarray.scalar`` -> :func:`_numpy_scalar`: a scalar of a
  checked dtype from bytes of exactly its size.

The numpy 1.x module names (``numpy.core.multiarray``) map to the same
stand-ins. Nothing is added to torch's allowlist outside the ``with`` block,
and ``torch.load`` without it behaves exactly as torch ships it.

:class:`MRevNetRunner` (``runner_type='MRevNetRunner'``) is mmengine's
``Runner`` with these globals in force while it loads checkpoints
(``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``).
:func:`load_runner_checkpoint` does the same for a script. A file that is
refused raises :class:`UntrustedCheckpointError`.
"""

import contextlib
import pickle
import re
from typing import Iterator, Optional

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

STATISTICS_METHODS = ('min', 'max', 'mean', 'current')
_STATE_KEYS = {'max_length', '_log_history', '_count_history'}
# Bool, signed and unsigned integers, floating point, complex.
_PLAIN_DTYPE_KINDS = 'biufc'
_BYTE_ORDERS = ('<', '>', '|', '=')
# An array holds at most this many bytes when loaded from a checkpoint;
# a HistoryBuffer keeps at most its max_length of float64 values.
_MAX_ARRAY_BYTES = 1 << 30


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds objects that safe loading refuses to build."""


def _refuse(reason: str):
    raise pickle.UnpicklingError(reason)


def _history_buffer_method(owner, name):
    """``getattr`` as mmengine's pickled HistoryBuffer uses it, no more."""
    if owner not in (HistoryBuffer, _LoadedHistoryBuffer):
        _refuse(
            f'getattr({owner!r}, {name!r}): the checkpoint may only look up '
            f'{STATISTICS_METHODS} on HistoryBuffer'
        )
    if name not in STATISTICS_METHODS:
        _refuse(
            f'getattr(HistoryBuffer, {name!r}): only {STATISTICS_METHODS} '
            'are allowed'
        )
    return getattr(HistoryBuffer, name)


class _DtypeSpec:
    """A numpy dtype as a checkpoint describes it, checked before use."""

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str):
            _refuse(f'numpy.dtype({code!r}): the type code must be a str')
        try:
            dtype = np.dtype(code)
        except TypeError as error:
            _refuse(f'numpy.dtype({code!r}): {error}')
        if dtype.kind not in _PLAIN_DTYPE_KINDS or dtype.fields is not None:
            _refuse(
                f'numpy.dtype({code!r}) has kind {dtype.kind!r}; only bool, '
                'integer, floating and complex dtypes are allowed (object, '
                'structured and string dtypes are refused)'
            )
        self.dtype = dtype

    def __setstate__(self, state):
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for the
        # plain dtypes; anything else would change the layout or the flags.
        expected_tail = (None, None, None, -1, -1, 0)
        if (
            not isinstance(state, tuple)
            or len(state) != 8
            or state[0] != 3
            or state[1] not in _BYTE_ORDERS
            or tuple(state[2:]) != expected_tail
        ):
            _refuse(f'numpy dtype state {state!r} is not a plain dtype')
        if state[1] in ('<', '>'):
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(spec) -> np.dtype:
    if not isinstance(spec, _DtypeSpec):
        _refuse(f'expected a numpy dtype, got {type(spec).__name__}')
    return spec.dtype


class _PickledArray(np.ndarray):
    """An array restored from checked raw bytes; saves as a plain array."""

    def __new__(cls, *args, **kwargs):
        _refuse('numpy.ndarray may not be called by a checkpoint')

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            _refuse('numpy array state must be a 5-tuple')
        version, shape, spec, fortran_order, raw = state
        dtype = _as_dtype(spec)
        if not (
            version == 1
            and isinstance(shape, tuple)
            and all(type(n) is int and n >= 0 for n in shape)
            and isinstance(fortran_order, bool)
            and isinstance(raw, bytes)
        ):
            _refuse(f'numpy array state {state[:4]!r} is malformed')
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != len(raw) or size > _MAX_ARRAY_BYTES:
            _refuse(
                f'numpy array of shape {shape} and dtype {dtype} needs '
                f'{size} bytes, the checkpoint holds {len(raw)}'
            )
        super().__setstate__((version, shape, dtype, fortran_order, raw))

    def __reduce_ex__(self, protocol):
        return self.view(np.ndarray).__reduce_ex__(protocol)


def _empty_array(subtype, shape, typecode):
    """``numpy.core.multiarray._reconstruct`` for plain arrays only."""
    if subtype is not _PickledArray:
        _refuse(f'_reconstruct({subtype!r}): only numpy.ndarray is allowed')
    return np.ndarray.__new__(_PickledArray, (0,), dtype=np.uint8)


def _numpy_scalar(spec, raw=None):
    """``numpy.core.multiarray.scalar`` for plain dtypes only."""
    dtype = _as_dtype(spec)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        _refuse(f'numpy {dtype} scalar needs {dtype.itemsize} bytes')
    return np.frombuffer(raw, dtype=dtype)[0]


def _plain_array(value, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        _refuse(f'HistoryBuffer.{name} must be a 1-D numpy array')
    return np.array(value.view(np.ndarray), copy=True)


class _LoadedHistoryBuffer(HistoryBuffer):
    """Checks a pickled HistoryBuffer's state, then becomes a plain one."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            _refuse('HistoryBuffer state must be a dict')
        unknown = set(state) - _STATE_KEYS - {'statistics_methods'}
        if unknown:
            _refuse(f'HistoryBuffer state has unknown keys {sorted(unknown)}')
        methods = state.get('statistics_methods', {})
        if not isinstance(methods, dict) or any(
            name not in STATISTICS_METHODS
            or method is not getattr(HistoryBuffer, name)
            for name, method in methods.items()
        ):
            _refuse(
                'HistoryBuffer statistics_methods may only hold '
                f'{STATISTICS_METHODS}, each under its own name'
            )
        max_length = state.get('max_length')
        if type(max_length) is not int or max_length <= 0:
            _refuse('HistoryBuffer.max_length must be a positive int')
        clean = dict(max_length=max_length)
        for name in ('_log_history', '_count_history'):
            clean[name] = _plain_array(state.get(name), name)
        if len(clean['_log_history']) != len(clean['_count_history']):
            _refuse('HistoryBuffer histories differ in length')
        self.__class__ = HistoryBuffer
        HistoryBuffer.__setstate__(self, clean)


def _safe_globals_for_runner_checkpoints() -> list:
    names = {
        'builtins.getattr': _history_buffer_method,
        'mmengine.logging.history_buffer.HistoryBuffer': (
            _LoadedHistoryBuffer
        ),
        'numpy.dtype': _DtypeSpec,
        'numpy.ndarray': _PickledArray,
    }
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        names[f'{module}._reconstruct'] = _empty_array
        names[f'{module}.scalar'] = _numpy_scalar
    return [(obj, name) for name, obj in names.items()]


def _refusal_reason(error: BaseException) -> str:
    """torch's reason for the refusal, without its general advice."""
    text = str(error).split('Check the documentation of torch.load')[0]
    for marker in ('WeightsUnpickler error:', 'trusted source.'):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    # torch's suggestion to allowlist the global follows the reason.
    text = re.split(r'\s+Please use `torch\.serialization', text)[0]
    return ' '.join(text.split()).rstrip('.') or 'not a valid checkpoint'


def untrusted_error(
    error: BaseException, source: Optional[str] = None
) -> UntrustedCheckpointError:
    """The error for a file that safe loading refused.

    Args:
        error (BaseException): What ``torch.load`` raised.
        source (str, optional): The file, for the message. Defaults to None.

    Returns:
        UntrustedCheckpointError: Names the refused global or operation and
        how to load a file one trusts.
    """
    where = f' {source}' if source else ''
    return UntrustedCheckpointError(
        f'Refused to load the checkpoint{where} as untrusted input: '
        f'{_refusal_reason(error)}. torch.load(weights_only=True) builds '
        'only tensors, plain values and the objects of mmengine Runner '
        'checkpoints. If you trust the file and know where it comes from, '
        'load it in a separate step with torch.load(path, '
        "weights_only=False) and save its tensors (e.g. its 'state_dict') "
        'with torch.save; then load that file.'
    )


@contextlib.contextmanager
def runner_checkpoint_globals(source: Optional[str] = None) -> Iterator:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints.

    Inside the block, the stand-ins described in the module docstring are
    allowed under the global names mmengine's checkpoints use; torch's
    allowlist is restored on exit. A refused file raises
    :class:`UntrustedCheckpointError`.

    Args:
        source (str, optional): The file being loaded, named in errors.
            Defaults to None.
    """
    with torch.serialization.safe_globals(
        _safe_globals_for_runner_checkpoints()
    ):
        try:
            yield
        except UntrustedCheckpointError:
            raise
        except pickle.UnpicklingError as error:
            raise untrusted_error(error, source) from error


def load_runner_checkpoint(filename: str, map_location='cpu') -> dict:
    """Load a checkpoint with mmengine's loader and safe globals.

    Args:
        filename (str): Path or URL, as ``mmengine.runner.CheckpointLoader``
            takes it.
        map_location (str | torch.device): Defaults to 'cpu'.

    Returns:
        dict: The checkpoint, its message hub with ``HistoryBuffer``
        objects (also when it was saved in plain types).
    """
    from mmengine.runner import CheckpointLoader

    from .plain_state import restore_message_hub

    with runner_checkpoint_globals(filename):
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location=map_location
        )
    if isinstance(checkpoint, dict) and 'message_hub' in checkpoint:
        checkpoint['message_hub'] = restore_message_hub(
            checkpoint['message_hub']
        )
    return checkpoint
