"""Load mmengine Runner checkpoints with torch's ``weights_only`` check on.

torch >= 2.6 loads files with ``weights_only=True``: its unpickler builds
tensors, containers and plain values, and any other global must be on an
allowlist. mmengine 0.10 checkpoints name a few more: the ``message_hub``
keeps :class:`~mmengine.logging.HistoryBuffer` objects holding numpy arrays,
numpy scalars, and the buffer's statistics methods, which pickle writes as
``getattr(HistoryBuffer, 'min')``. Allowing those globals as they are would
be unsafe, so :func:`runner_checkpoint_globals` allows, for the duration of
a ``with`` block only, stand-ins registered under the names the pickle uses.
Each accepts exactly what mmengine writes and refuses anything else, on
every opcode that reaches it (a call by REDUCE, a creation by NEWOBJ, a
state by BUILD):

* ``builtins.getattr`` -> :func:`_history_buffer_method`. Returns one of
  ``HistoryBuffer.min/max/mean/current`` and nothing else. The real
  ``getattr`` reaches every module's globals (``fn.__globals__``) and the
  builtins module (``getattr.__self__``); the stand-in reaches four fixed
  functions and cannot call them.
* ``mmengine.logging.history_buffer.HistoryBuffer`` ->
  :class:`_LoadedHistoryBuffer`. It can only be created empty (NEWOBJ with
  no arguments, as pickle writes it); calling it (REDUCE) is refused, since
  mmengine's ``__init__`` turns any nested lists into arrays. Its
  ``__setstate__`` checks the state (known keys, ``max_length`` an int, 1-D
  numeric arrays of equal length, statistics methods that are the class's
  own under their own names), then turns the object into a plain
  ``HistoryBuffer``. mmengine's ``__setstate__`` merges the statistics into
  a dict shared by every buffer in the process, so unchecked state could
  replace them.
* ``numpy.dtype`` -> :class:`_DtypeSpec`. Accepts a bool, integer,
  floating or complex type code and the state numpy writes for it, whether
  it is called or created by NEWOBJ. Object, structured, sub-array, string
  and datetime types are refused: only these plain types make raw bytes
  safe to reinterpret.
* ``numpy._core.multiarray._reconstruct`` -> :func:`_empty_array`, and
  ``numpy.ndarray`` -> :class:`_PickledArray`. The array's ``__setstate__``
  accepts only a checked dtype and raw bytes of exactly the declared size
  (computed with Python integers, so no shape overflows it), then lets
  numpy copy them. ``numpy.ndarray`` cannot be called or created.
* ``numpy._core.multiarray.scalar`` -> :func:`_numpy_scalar`: a scalar of a
  checked dtype from bytes of exactly its size.

The numpy 1.x module names (``numpy.core.multiarray``) map to the same
stand-ins. Nothing is added to torch's allowlist outside the ``with`` block,
and ``torch.load`` without it behaves exactly as torch ships it.

A file can make pickle reuse an object many times at the cost of one
opcode (its memo). Two limits keep such reuse from multiplying memory or
time; both are counted per loaded file and both are set by ``max_elements``
(default :data:`DEFAULT_MAX_ELEMENTS`, or the environment variable
:data:`MAX_ELEMENTS_ENV`):

* the numpy values the stand-ins create (array elements, scalars, and the
  copies a HistoryBuffer makes of its arrays);
* the entries of the loaded containers counted as a recursive reader sees
  them, every reference to a shared list counting again
  (:func:`check_checkpoint_objects`; ``n`` lists that each hold the next
  one twice are ``2**n`` entries). Reference cycles and nesting deeper than
  :data:`MAX_NESTING` are refused too.

mmengine's resume also runs ``meta['config']``, a string, as Python code
(``Config.fromstring``) to read ``gpu_ids``; :func:`check_checkpoint_objects`
refuses a config that is more than assignments of plain values.

:class:`MRevNetRunner` (``runner_type='MRevNetRunner'``) is mmengine's
``Runner`` with these globals in force while it loads checkpoints
(``resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``).
:func:`load_runner_checkpoint` does the same for a script. A file that is
refused raises :class:`UntrustedCheckpointError`, naming the refused entry.
"""

import ast
import contextlib
import contextvars
import functools
import math
import os
import pickle
import re
from collections import Counter, OrderedDict
from typing import Iterator, Optional

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

from mmrevnet.models.utils.weight_loading import (
    UntrustedCheckpointError,
    check_full_pickle_not_forced,
)

STATISTICS_METHODS = ('min', 'max', 'mean', 'current')
_STATE_KEYS = {'max_length', '_log_history', '_count_history'}
# Bool, signed and unsigned integers, floating point, complex.
_PLAIN_DTYPE_KINDS = 'biufc'
_BYTE_ORDERS = ('<', '>', '|', '=')
# An array holds at most this many bytes when loaded from a checkpoint;
# a HistoryBuffer keeps at most its max_length of float64 values.
_MAX_ARRAY_BYTES = 1 << 30
# numpy arrays have at most 64 dimensions; a HistoryBuffer's have one.
_MAX_NDIM = 32

#: Default of ``max_elements``: numpy values the non-tensor state of one
#: checkpoint may create, and container entries it may hold (counted with
#: repetition). 2**24 float64 values are 128 MiB; a HistoryBuffer of
#: mmengine keeps at most 10**6 values of each of its two histories, so
#: this is about eight buffers at that length.
DEFAULT_MAX_ELEMENTS = 1 << 24
#: Environment variable that overrides :data:`DEFAULT_MAX_ELEMENTS`.
MAX_ELEMENTS_ENV = 'MMREVNET_CHECKPOINT_MAX_ELEMENTS'
#: Deepest nesting of containers a checkpoint may have.
MAX_NESTING = 100


def _refuse(reason: str):
    raise pickle.UnpicklingError(reason)


def default_max_elements() -> int:
    """``max_elements`` when none is given: the environment or the default.

    Returns:
        int: ``$MMREVNET_CHECKPOINT_MAX_ELEMENTS`` if set, else
        :data:`DEFAULT_MAX_ELEMENTS`.

    Raises:
        ValueError: The variable is not a positive integer.
    """
    value = os.environ.get(MAX_ELEMENTS_ENV)
    if value is None:
        return DEFAULT_MAX_ELEMENTS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(
            f'{MAX_ELEMENTS_ENV} must be a positive integer, got {value!r}'
        )
    return limit


def _check_max_elements(max_elements) -> int:
    if max_elements is None:
        return default_max_elements()
    if type(max_elements) is not int or max_elements <= 0:
        raise ValueError(
            f'max_elements must be a positive int, got {max_elements!r}'
        )
    return max_elements


class _Budget:
    """The numpy values the stand-ins may still create for one file."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0

    def charge(self, count: int, entry: str) -> None:
        if self.used + count > self.limit:
            _refuse(
                f'{entry} would make the checkpoint create '
                f'{self.used + count} numpy values, more than max_elements='
                f'{self.limit} (set {MAX_ELEMENTS_ENV} for a larger genuine '
                'checkpoint)'
            )
        self.used += count


_BUDGET: contextvars.ContextVar = contextvars.ContextVar('_BUDGET')


def _charge(count: int, entry: str) -> None:
    budget = _BUDGET.get(None)
    if budget is None:
        # A stand-in used outside runner_checkpoint_globals (by hand).
        budget = _Budget(default_max_elements())
    budget.charge(count, entry)


def _guarded(entry: str):
    """Report any error of a stand-in as a refusal naming ``entry``.

    The stand-ins check their arguments; this catches what an unforeseen
    argument still makes Python or numpy raise (``TypeError``,
    ``OverflowError``, ``MemoryError``...), so that every refusal is one
    :class:`UntrustedCheckpointError`.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except pickle.UnpicklingError:
                raise
            except Exception as error:  # noqa: BLE001 (reported as refusal)
                _refuse(f'{entry}: {type(error).__name__}: {error}')

        return guarded

    return wrap


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + '...'


@_guarded('getattr (HistoryBuffer statistics)')
def _history_buffer_method(*args):
    """``getattr`` as mmengine's pickled HistoryBuffer uses it, no more."""
    if len(args) != 2:
        _refuse(f'getattr called with {len(args)} arguments; needs 2')
    owner, name = args
    if owner is not HistoryBuffer and owner is not _LoadedHistoryBuffer:
        _refuse(
            f'getattr({_short(owner)}, {_short(name)}): the checkpoint may '
            f'only look up {STATISTICS_METHODS} on HistoryBuffer'
        )
    if type(name) is not str or name not in STATISTICS_METHODS:
        _refuse(
            f'getattr(HistoryBuffer, {_short(name)}): only '
            f'{STATISTICS_METHODS} are allowed'
        )
    return getattr(HistoryBuffer, name)


def _checked_dtype(code) -> np.dtype:
    if type(code) is not str:
        _refuse(f'numpy.dtype({_short(code)}): the type code must be a str')
    try:
        dtype = np.dtype(code)
    except Exception as error:  # noqa: BLE001 (numpy's parse errors vary)
        _refuse(f'numpy.dtype({_short(code)}): {error}')
    if (
        dtype.kind not in _PLAIN_DTYPE_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
    ):
        _refuse(
            f'numpy.dtype({_short(code)}) has kind {dtype.kind!r}; only '
            'bool, integer, floating and complex dtypes are allowed '
            '(object, structured and string dtypes are refused)'
        )
    return dtype


class _DtypeSpec:
    """A numpy dtype as a checkpoint describes it, checked before use.

    Checked in ``__new__``, which both a call (REDUCE) and a creation by
    NEWOBJ run, so no instance exists without a checked dtype.
    """

    __slots__ = ('dtype',)

    @_guarded('numpy.dtype')
    def __new__(cls, *args, **kwargs):
        if kwargs or not 1 <= len(args) <= 3:
            _refuse(
                f'numpy.dtype takes (code, align, copy), got {len(args)} '
                f'arguments and keywords {sorted(kwargs)}'
            )
        if any(type(flag) is not bool for flag in args[1:]):
            _refuse(
                f'numpy.dtype({_short(args[0])}, ...): align and copy must '
                'be bools'
            )
        self = object.__new__(cls)
        self.dtype = _checked_dtype(args[0])
        return self

    @_guarded('numpy dtype state')
    def __setstate__(self, state):
        # numpy writes (3, byte order, None, None, None, -1, -1, 0) for the
        # plain dtypes; anything else would change the layout or the flags.
        if (
            type(state) is not tuple
            or len(state) != 8
            or type(state[0]) is not int
            or state[0] != 3
            or type(state[1]) is not str
            or state[1] not in _BYTE_ORDERS
            or any(item is not None for item in state[2:5])
            or any(type(item) is not int for item in state[5:])
            or state[5:] != (-1, -1, 0)
        ):
            _refuse(
                f'numpy dtype state {_short(state)} is not the state of a '
                'plain dtype'
            )
        if state[1] in ('<', '>'):
            self.dtype = self.dtype.newbyteorder(state[1])


def _as_dtype(spec, entry: str) -> np.dtype:
    if type(spec) is not _DtypeSpec:
        _refuse(f'{entry}: expected a numpy dtype, got {type(spec).__name__}')
    return spec.dtype


class _PickledArray(np.ndarray):
    """An array restored from checked raw bytes; saves as a plain array."""

    def __new__(cls, *args, **kwargs):
        _refuse(
            'numpy.ndarray may not be called or created by a checkpoint '
            '(only numpy._core.multiarray._reconstruct creates arrays)'
        )

    @_guarded('numpy array state')
    def __setstate__(self, state):
        if type(state) is not tuple or len(state) != 5:
            _refuse('numpy array state must be a 5-tuple')
        version, shape, spec, fortran_order, raw = state
        dtype = _as_dtype(spec, 'numpy array state')
        if not (
            type(version) is int
            and version == 1
            and type(shape) is tuple
            and len(shape) <= _MAX_NDIM
            and all(type(n) is int and n >= 0 for n in shape)
            and type(fortran_order) is bool
            and type(raw) is bytes
        ):
            _refuse(
                f'numpy array state ({_short(version)}, {_short(shape)}, '
                f'{dtype}, {_short(fortran_order)}, {type(raw).__name__}) is '
                'malformed'
            )
        # Python integers: a shape like (2**32, 2**32) does not wrap.
        count = math.prod(shape)
        size = count * dtype.itemsize
        if size != len(raw) or size > _MAX_ARRAY_BYTES:
            _refuse(
                f'numpy array of shape {_short(shape)} and dtype {dtype} '
                f'needs {size} bytes, the checkpoint holds {len(raw)} '
                f'(at most {_MAX_ARRAY_BYTES} are accepted)'
            )
        _charge(count, f'numpy array of shape {_short(shape)}')
        super().__setstate__((version, shape, dtype, fortran_order, raw))

    def __reduce_ex__(self, protocol):
        return self.view(np.ndarray).__reduce_ex__(protocol)


@_guarded('numpy._core.multiarray._reconstruct')
def _empty_array(*args):
    """``numpy.core.multiarray._reconstruct`` for plain arrays only."""
    if len(args) != 3:
        _refuse(f'_reconstruct called with {len(args)} arguments; needs 3')
    subtype, shape, typecode = args
    if subtype is not _PickledArray:
        _refuse(
            f'_reconstruct({_short(subtype)}): only numpy.ndarray is allowed'
        )
    if type(shape) is not tuple or shape != (0,) or typecode != b'b':
        _refuse(
            f'_reconstruct(numpy.ndarray, {_short(shape)}, '
            f"{_short(typecode)}): numpy writes ((0,), b'b')"
        )
    return np.ndarray.__new__(_PickledArray, (0,), dtype=np.uint8)


@_guarded('numpy._core.multiarray.scalar')
def _numpy_scalar(*args):
    """``numpy.core.multiarray.scalar`` for plain dtypes only."""
    if not 1 <= len(args) <= 2:
        _refuse(f'numpy scalar called with {len(args)} arguments')
    dtype = _as_dtype(args[0], 'numpy scalar')
    raw = args[1] if len(args) == 2 else None
    if type(raw) is not bytes or len(raw) != dtype.itemsize:
        _refuse(f'numpy {dtype} scalar needs {dtype.itemsize} bytes')
    _charge(1, f'numpy {dtype} scalar')
    return np.frombuffer(raw, dtype=dtype)[0]


def _plain_array(value, name: str) -> np.ndarray:
    if not isinstance(value, _PickledArray) or value.ndim != 1:
        _refuse(f'HistoryBuffer.{name} must be a 1-D numpy array')
    # The copy is charged: one array shared by many buffers is copied once
    # per buffer.
    _charge(value.size, f'HistoryBuffer.{name} of {value.size} values')
    return np.array(value.view(np.ndarray), copy=True)


class _LoadedHistoryBuffer(HistoryBuffer):
    """Checks a pickled HistoryBuffer's state, then becomes a plain one.

    Pickle creates it empty (NEWOBJ without arguments) and then sets its
    state (BUILD); calling it (REDUCE) or passing arguments is refused.
    """

    def __new__(cls, *args, **kwargs):
        if args or kwargs:
            _refuse(
                'HistoryBuffer(...) may not be created with arguments by a '
                'checkpoint (pickle creates it empty and sets its state)'
            )
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        _refuse(
            'HistoryBuffer may not be called by a checkpoint (pickle creates '
            'it empty and sets its state)'
        )

    @_guarded('HistoryBuffer state')
    def __setstate__(self, state):
        if type(state) is not dict:
            _refuse('HistoryBuffer state must be a dict')
        if any(type(key) is not str for key in state):
            _refuse('HistoryBuffer state keys must be str')
        unknown = set(state) - _STATE_KEYS - {'statistics_methods'}
        if unknown:
            _refuse(f'HistoryBuffer state has unknown keys {sorted(unknown)}')
        methods = state.get('statistics_methods', {})
        if type(methods) is not dict or any(
            type(name) is not str
            or name not in STATISTICS_METHODS
            or method is not getattr(HistoryBuffer, name)
            for name, method in methods.items()
        ):
            _refuse(
                'HistoryBuffer statistics_methods may only hold '
                f'{STATISTICS_METHODS}, each under its own name'
            )
        max_length = state.get('max_length')
        if type(max_length) is not int or max_length <= 0:
            _refuse(
                'HistoryBuffer.max_length must be a positive int, got '
                f'{_short(max_length)}'
            )
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


# ---------------------------------------------------------------------------
# What the loaded objects may be.
# ---------------------------------------------------------------------------

_SEQUENCES = (list, tuple, set, frozenset)
_MAPPINGS = (dict, OrderedDict, Counter)


def _children(obj):
    """(label, child) pairs of a container, or None for a leaf."""
    kind = type(obj)
    if kind in _MAPPINGS:
        pairs = []
        for key, value in obj.items():
            label = f'[{_short(key, 30)}]'
            if type(key) in (tuple, frozenset):
                pairs.append((label + ' (key)', key))
            pairs.append((label, value))
        return iter(pairs)
    if kind in _SEQUENCES:
        return ((f'[{index}]', item) for index, item in enumerate(obj))
    if kind is HistoryBuffer or isinstance(obj, torch.Tensor):
        attributes = getattr(obj, '__dict__', None) or {}
        return iter([(f'.{k}', v) for k, v in attributes.items()])
    return None


def _path(path: str) -> str:
    """A key path with runs of the same index abbreviated: ``[0]*60``."""

    def run(match):
        return f'{match.group(2)}*{len(match.group(1)) // len(match.group(2))}'

    return re.sub(r'((\[[^\]]*\])\2{3,})', run, path)


def _too_many(path: str, at: str, limit: int):
    path, at = _path(path), _path(at)
    _refuse(
        f'{path} holds more than max_elements={limit} entries counted with '
        f'repetition (shared references at {at}; set {MAX_ELEMENTS_ENV} for '
        'a larger genuine checkpoint)'
    )


def _check_object_graph(root, limit: int) -> None:
    """Refuse cycles, deep nesting and more than ``limit`` entries.

    Entries are counted as a recursive reader (``copy.deepcopy`` without
    its memo, torch's optimizer state casting) visits them: a container
    referenced twice counts twice. Each container is visited once, so the
    check itself takes time linear in the file.
    """
    children = _children(root)
    if children is None:
        return
    # Per open container: [object, its children, entries so far, path].
    stack = [[root, children, 1, 'checkpoint']]
    done = {}
    active = {id(root)}
    while stack:
        frame = stack[-1]
        for label, child in frame[1]:
            path = frame[3] + label
            if type(child) is _LoadedHistoryBuffer:
                _refuse(
                    f'{_path(path)} is a HistoryBuffer whose state was never '
                    'set (BUILD missing)'
                )
            if type(child) is _DtypeSpec:
                _refuse(f'{_path(path)} is a numpy dtype outside an array')
            grandchildren = _children(child)
            if grandchildren is None:
                frame[2] += 1
            elif id(child) in done:
                frame[2] += done[id(child)]
            elif id(child) in active:
                _refuse(f'{_path(path)} is a reference cycle')
            elif len(stack) >= MAX_NESTING:
                _refuse(
                    f'{_path(path)} nests containers deeper than '
                    f'{MAX_NESTING} levels'
                )
            else:
                active.add(id(child))
                stack.append([child, grandchildren, 1, path])
                break
            if frame[2] > limit:
                _too_many(frame[3], path, limit)
        else:
            stack.pop()
            active.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > limit:
                    _too_many(stack[-1][3], frame[3], limit)


# What ``Config.pretty_text`` writes: assignments of plain values.
_PLAIN_CONFIG_NODES = (
    ast.Module,
    ast.Assign,
    ast.Expr,
    ast.Constant,
    ast.Dict,
    ast.List,
    ast.Tuple,
    ast.Set,
    ast.Load,
    ast.Store,
    ast.UnaryOp,
    ast.USub,
    ast.UAdd,
    ast.keyword,
)


def _check_config_text(text, entry: str) -> None:
    """Refuse a ``meta['config']`` that would do more than assign values."""
    if type(text) is not str:
        _refuse(f'{entry} must be a str, got {type(text).__name__}')
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError) as error:
        _refuse(f'{entry} is not Python: {error}')
    for node in ast.walk(tree):
        if isinstance(node, _PLAIN_CONFIG_NODES):
            continue
        if isinstance(node, ast.Name) and (
            isinstance(node.ctx, ast.Store) or node.id == 'dict'
        ):
            continue
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == 'dict'
            and not node.args
            and all(keyword.arg is not None for keyword in node.keywords)
        ):
            continue
        _refuse(
            f'{entry} line {getattr(node, "lineno", "?")} holds '
            f'{type(node).__name__} ({_short(ast.unparse(node), 50)}): '
            "mmengine's resume runs this text as Python; a saved config "
            'only assigns plain values and dict(...)'
        )


def check_checkpoint_objects(
    checkpoint, source: Optional[str] = None, max_elements=None
) -> None:
    """Refuse a loaded checkpoint that its consumers cannot read safely.

    :func:`load_runner_checkpoint` and :class:`MRevNetRunner` call this on
    what they load; call it after ``torch.load`` inside your own
    :func:`runner_checkpoint_globals` block.

    Args:
        checkpoint: What ``torch.load`` returned.
        source (str, optional): The file, for the message. Defaults to None.
        max_elements (int, optional): Most container entries, counted with
            repetition. Defaults to None (:func:`default_max_elements`).

    Raises:
        UntrustedCheckpointError: A reference cycle, nesting deeper than
            :data:`MAX_NESTING`, more than ``max_elements`` entries, a
            stand-in whose state was never set, or a ``meta['config']``
            that is more than plain assignments.
    """
    limit = _check_max_elements(max_elements)
    try:
        _check_object_graph(checkpoint, limit)
        meta = checkpoint.get('meta') if type(checkpoint) is dict else None
        if type(meta) is dict and 'config' in meta:
            _check_config_text(meta['config'], "checkpoint['meta']['config']")
    except pickle.UnpicklingError as error:
        raise untrusted_error(error, source) from None


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


def _raised_while_unpickling(error: BaseException):
    """The function the weights-only unpickler called when ``error`` rose.

    Returns None when the error did not come from inside the unpickler
    (then it is not the file's doing and passes through unchanged).
    """
    frames = []
    trace = error.__traceback__
    while trace is not None:
        frames.append(trace.tb_frame.f_code)
        trace = trace.tb_next
    inside = [
        index
        for index, code in enumerate(frames)
        if code.co_filename.endswith('_weights_only_unpickler.py')
    ]
    if not inside:
        return None
    called = frames[inside[-1] + 1 : inside[-1] + 2]
    return called[0].co_name if called else 'the unpickler'


@contextlib.contextmanager
def runner_checkpoint_globals(
    source: Optional[str] = None, max_elements=None
) -> Iterator:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints.

    Inside the block, the stand-ins described in the module docstring are
    allowed under the global names mmengine's checkpoints use; torch's
    allowlist is restored on exit. A refused file raises
    :class:`UntrustedCheckpointError`, and so does any other error raised
    while torch's unpickler runs (named after the function it called).

    Args:
        source (str, optional): The file being loaded, named in errors.
            Defaults to None.
        max_elements (int, optional): Most numpy values the stand-ins may
            create in the block. Defaults to None
            (:func:`default_max_elements`).

    Raises:
        UntrustedCheckpointError: On entry, when
            ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.
    """
    check_full_pickle_not_forced()
    token = _BUDGET.set(_Budget(_check_max_elements(max_elements)))
    try:
        with torch.serialization.safe_globals(
            _safe_globals_for_runner_checkpoints()
        ):
            try:
                yield
            except UntrustedCheckpointError:
                raise
            except pickle.UnpicklingError as error:
                raise untrusted_error(error, source) from None
            except Exception as error:
                called = _raised_while_unpickling(error)
                # A damaged archive (a storage record missing or cut short)
                # is torch's own error about the file, not a refusal.
                if called in (None, 'persistent_load'):
                    raise
                reason = pickle.UnpicklingError(
                    f'{called} raised {type(error).__name__}: {error}'
                )
                raise untrusted_error(reason, source) from None
    finally:
        _BUDGET.reset(token)


def load_runner_checkpoint(
    filename: str, map_location='cpu', max_elements=None
) -> dict:
    """Load a checkpoint with mmengine's loader and safe globals.

    Args:
        filename (str): Path or URL, as ``mmengine.runner.CheckpointLoader``
            takes it.
        map_location (str | torch.device): Defaults to 'cpu'.
        max_elements (int, optional): See :func:`runner_checkpoint_globals`
            and :func:`check_checkpoint_objects`. Defaults to None.

    Returns:
        dict: The checkpoint, its message hub with ``HistoryBuffer``
        objects (also when it was saved in plain types).
    """
    from mmengine.runner import CheckpointLoader

    from .plain_state import restore_message_hub

    with runner_checkpoint_globals(filename, max_elements):
        checkpoint = CheckpointLoader.load_checkpoint(
            filename, map_location=map_location
        )
    check_checkpoint_objects(checkpoint, filename, max_elements)
    if isinstance(checkpoint, dict) and 'message_hub' in checkpoint:
        checkpoint['message_hub'] = restore_message_hub(
            checkpoint['message_hub']
        )
    return checkpoint


# ---------------------------------------------------------------------------
# Resuming after a crash.
# ---------------------------------------------------------------------------

_NUMBERED_CHECKPOINT = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def checkpoint_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be a complete ``torch.save`` file, or None.

    A zip archive's directory is written last, so a save that was killed
    leaves a file without one. Checks the file's end, not its tensors.

    Args:
        path (str): A local file.

    Returns:
        str | None: The reason, or None for a complete archive (or a
        legacy pickle file, which cannot be checked this way).
    """
    import zipfile

    if not os.path.isfile(path):
        return 'it does not exist'
    size = os.path.getsize(path)
    if size == 0:
        return (
            'it is truncated (0 bytes; was the process killed while saving '
            'it?)'
        )
    with open(path, 'rb') as f:
        legacy = f.read(1) == b'\x80'
    if legacy or zipfile.is_zipfile(path):
        return None
    return (
        f'it is truncated ({size} bytes, no zip directory at its end; was '
        'the process killed while saving it?)'
    )


def find_resumable_checkpoint(work_dir: str, report=print) -> Optional[str]:
    """The checkpoint to resume from: the latest one that is complete.

    mmengine writes ``iter_N.pth`` and then names it in ``last_checkpoint``.
    A process killed while saving leaves a truncated file, or an empty
    ``last_checkpoint``. This returns what ``last_checkpoint`` names when
    that file is complete; otherwise it says which file is unusable and why
    and falls back to the complete ``iter_N.pth`` / ``epoch_N.pth`` of the
    work dir with the largest N. Truncated files newer than the choice are
    named too (they are overwritten when training gets there again).

    Args:
        work_dir (str): The Runner's work dir.
        report (callable): Takes each message. Defaults to ``print``.

    Returns:
        str | None: The checkpoint, or None when the work dir holds no
        complete one (training starts from scratch).
    """
    numbered = []
    if os.path.isdir(work_dir):
        for name in os.listdir(work_dir):
            match = _NUMBERED_CHECKPOINT.match(name)
            if match:
                numbered.append((int(match.group(1)), name))
    numbered.sort(reverse=True)
    problems = {
        name: checkpoint_file_problem(os.path.join(work_dir, name))
        for _, name in numbered
    }
    chosen = None
    pointer = os.path.join(work_dir, 'last_checkpoint')
    if os.path.exists(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if not named:
            report(
                f'{pointer} is empty (the process was killed while writing '
                'it?)'
            )
        else:
            problem = checkpoint_file_problem(named)
            if problem is None:
                chosen = named
            else:
                report(f'{pointer} names {named}, but {problem}')
    if chosen is None:
        for _, name in numbered:
            if problems[name] is None:
                chosen = os.path.join(work_dir, name)
                if os.path.exists(pointer):
                    report(f'resuming from {chosen} instead')
                break
    chosen_name = os.path.basename(chosen) if chosen else None
    for _, name in numbered:
        if name == chosen_name:
            break
        if problems[name] is not None:
            report(
                f'{os.path.join(work_dir, name)} is not used: {problems[name]}'
            )
    if chosen is None and numbered:
        report(
            f'no complete checkpoint in {work_dir}; training starts from '
            'scratch'
        )
    return chosen
