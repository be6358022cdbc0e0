"""Hostile checkpoint files for the safe-loading tests.

Each builder writes a torch zip checkpoint whose ``data.pkl`` is assembled
opcode by opcode, as an attacker would, and returns what a successful
attack would leave behind (a marker file that must never appear).
"""

import io
import struct
import zipfile
from typing import Callable, Dict

import torch

PROTO_2 = b'\x80\x02'
MARK, STOP, TUPLE = b'(', b'.', b't'
TUPLE1, TUPLE2, TUPLE3 = b'\x85', b'\x86', b'\x87'
REDUCE, BUILD, NEWOBJ = b'R', b'b', b'\x81'
EMPTY_DICT, SETITEM = b'}', b's'
NONE, NEWFALSE = b'N', b'\x89'


def global_(module: str, name: str) -> bytes:
    return b'c' + module.encode() + b'\n' + name.encode() + b'\n'


def text(value: str) -> bytes:
    data = value.encode()
    return b'X' + struct.pack('<I', len(data)) + data


def latin1_bytes(value: bytes) -> bytes:
    """``bytes`` as protocol 2 writes them: ``_codecs.encode(str, ...)``."""
    return (
        global_('_codecs', 'encode')
        + text(value.decode('latin1'))
        + text('latin1')
        + TUPLE2
        + REDUCE
    )


def integer(value: int) -> bytes:
    return b'J' + struct.pack('<i', value)


def put(slot: int) -> bytes:
    return b'q' + bytes([slot])


def get(slot: int) -> bytes:
    return b'h' + bytes([slot])


def pickle_program(*parts: bytes) -> bytes:
    return PROTO_2 + b''.join(parts) + STOP


def _template() -> Dict[str, bytes]:
    """The records of a genuine torch zip checkpoint (an empty dict)."""
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, records: Dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(name, data)


def write_checkpoint(path, data_pkl: bytes) -> None:
    """A torch zip checkpoint with ``data.pkl`` replaced."""
    records = _template()
    (pkl,) = [name for name in records if name.endswith('/data.pkl')]
    records[pkl] = data_pkl
    write_zip(path, records)


def getattr_gadget(marker: str) -> bytes:
    """``builtins.getattr`` walking to module globals and rebinding a name.

    ``getattr(getattr, '__self__')`` is the builtins module and
    ``getattr(_rebuild_tensor_v2, '__globals__')`` the globals of
    ``torch._utils``. The program rebinds ``_rebuild_tensor`` there to
    ``open`` and calls the allowed ``_rebuild_tensor_v2``, which then calls
    ``open(marker, 'w', -1, None)``: the file appears if the real
    ``getattr`` is allowed.
    """
    return pickle_program(
        MARK,
        global_('builtins', 'getattr'),
        put(0),
        # globals of torch._utils
        get(0),
        global_('torch._utils', '_rebuild_tensor_v2'),
        put(1),
        text('__globals__'),
        TUPLE2,
        REDUCE,
        text('_rebuild_tensor'),
        # builtins.open
        get(0),
        get(0),
        get(0),
        text('__self__'),
        TUPLE2,
        REDUCE,
        text('open'),
        TUPLE2,
        REDUCE,
        SETITEM,
        get(1),
        MARK,
        text(marker),
        text('w'),
        integer(-1),
        NONE,
        NEWFALSE,
        EMPTY_DICT,
        TUPLE,
        REDUCE,
        TUPLE,
    )


def os_system_global(marker: str) -> bytes:
    """A GLOBAL of a callable nobody allowed: ``os.system``."""
    return pickle_program(
        global_('os', 'system'),
        text(f'touch {marker}'),
        TUPLE1,
        REDUCE,
    )


def eval_global(marker: str) -> bytes:
    """A GLOBAL of ``builtins.eval``, a callable outside every allowlist."""
    return pickle_program(
        global_('builtins', 'eval'),
        text(f'open({marker!r}, "w").close()'),
        TUPLE1,
        REDUCE,
    )


def reduce_unlisted_function(marker: str) -> bytes:
    """REDUCE of a function the stand-in getattr hands out (HistoryBuffer.min).

    The function is not a global of the allowlist, so calling it is refused
    even though looking it up is not.
    """
    del marker
    return pickle_program(
        global_('builtins', 'getattr'),
        global_('mmengine.logging.history_buffer', 'HistoryBuffer'),
        text('min'),
        TUPLE2,
        REDUCE,
        NONE,
        TUPLE1,
        REDUCE,
    )


def history_buffer_hostile_state(marker: str) -> bytes:
    """BUILD of a HistoryBuffer whose statistics are a torch function.

    mmengine's ``__setstate__`` merges ``statistics_methods`` into the dict
    that every HistoryBuffer of the process shares, so this replaces
    ``mean`` for all of them.
    """
    del marker
    return pickle_program(
        global_('mmengine.logging.history_buffer', 'HistoryBuffer'),
        b')',
        NEWOBJ,
        EMPTY_DICT,
        text('statistics_methods'),
        EMPTY_DICT,
        text('mean'),
        global_('torch._utils', '_rebuild_tensor_v2'),
        SETITEM,
        SETITEM,
        text('max_length'),
        integer(10),
        SETITEM,
        BUILD,
    )


def numpy_object_array(marker: str) -> bytes:
    """A numpy array of dtype object (its items are arbitrary objects)."""
    del marker
    return pickle_program(
        global_('numpy._core.multiarray', '_reconstruct'),
        global_('numpy', 'ndarray'),
        integer(0),
        TUPLE1,
        latin1_bytes(b'b'),
        TUPLE3,
        REDUCE,
        MARK,
        integer(1),
        integer(1),
        TUPLE1,
        global_('numpy', 'dtype'),
        text('O8'),
        NEWFALSE,
        b'\x88',
        TUPLE3,
        REDUCE,
        NEWFALSE,
        b']',
        text('payload'),
        b'a',
        TUPLE,
        BUILD,
    )


EMPTY_LIST, EMPTY_TUPLE, APPEND = b']', b')', b'a'
NEWTRUE = b'\x88'


def long_int(value: int) -> bytes:
    """LONG1: any int, little-endian two's complement."""
    data = value.to_bytes((value.bit_length() + 8) // 8, 'little', signed=True)
    return b'\x8a' + bytes([len(data)]) + data


def binfloat(value: float) -> bytes:
    return b'G' + struct.pack('>d', value)


_HISTORY_BUFFER = global_('mmengine.logging.history_buffer', 'HistoryBuffer')


def _put_long(slot: int) -> bytes:
    return b'r' + struct.pack('<I', slot)


def _get_long(slot: int) -> bytes:
    return b'j' + struct.pack('<I', slot)


def shared_tuples(depth: int) -> bytes:
    """``depth`` tuples, each holding the previous one twice.

    ``2**depth`` leaves from ``depth`` objects (pickle's memo shares them);
    the last tuple is left on the stack.
    """
    parts = [binfloat(1.0)]
    for level in range(depth):
        parts += [_put_long(1000 + level), _get_long(1000 + level), TUPLE2]
    return b''.join(parts)


def history_buffer_reduce_amplified(marker: str) -> bytes:
    """REDUCE of HistoryBuffer on 40 shared tuples (2**40 leaves).

    mmengine's ``__init__`` hands the lists to numpy, which visits every
    leaf: gigabytes and minutes from a file of about a kilobyte.
    """
    del marker
    return pickle_program(
        _HISTORY_BUFFER,
        shared_tuples(40),
        _put_long(5000),
        _get_long(5000),
        TUPLE2,
        REDUCE,
    )


def history_buffer_reduce_object(marker: str) -> bytes:
    """REDUCE of HistoryBuffer on a list of str: an object-dtype array."""
    del marker
    return pickle_program(
        _HISTORY_BUFFER,
        EMPTY_LIST,
        text('payload'),
        APPEND,
        EMPTY_LIST,
        integer(1),
        APPEND,
        TUPLE2,
        REDUCE,
    )


def history_buffer_reduce_junk_length(marker: str) -> bytes:
    """REDUCE of HistoryBuffer([1.0], [1], 'junk')."""
    del marker
    return pickle_program(
        _HISTORY_BUFFER,
        EMPTY_LIST,
        binfloat(1.0),
        APPEND,
        EMPTY_LIST,
        integer(1),
        APPEND,
        text('junk'),
        TUPLE3,
        REDUCE,
    )


def history_buffer_newobj_args(marker: str) -> bytes:
    """NEWOBJ of HistoryBuffer with arguments (shared tuples)."""
    del marker
    return pickle_program(
        _HISTORY_BUFFER,
        shared_tuples(30),
        put(100),
        get(100),
        TUPLE2,
        NEWOBJ,
    )


def history_buffer_never_built(marker: str) -> bytes:
    """NEWOBJ of HistoryBuffer without the BUILD that checks its state."""
    del marker
    return pickle_program(
        EMPTY_DICT,
        text('buffer'),
        _HISTORY_BUFFER,
        EMPTY_TUPLE,
        NEWOBJ,
        SETITEM,
    )


def _array(shape: bytes, dtype: bytes, raw: bytes) -> bytes:
    """``_reconstruct`` + BUILD of an array with the given state parts."""
    return b''.join(
        [
            global_('numpy._core.multiarray', '_reconstruct'),
            global_('numpy', 'ndarray'),
            integer(0),
            TUPLE1,
            latin1_bytes(b'b'),
            TUPLE3,
            REDUCE,
            MARK,
            integer(1),
            shape,
            dtype,
            NEWFALSE,
            raw,
            TUPLE,
            BUILD,
        ]
    )


def _dtype(code: str) -> bytes:
    return (
        global_('numpy', 'dtype')
        + text(code)
        + NEWFALSE
        + NEWTRUE
        + (TUPLE3 + REDUCE)
    )


def _overflow_shape(*dims: int) -> Callable[[str], bytes]:
    def build(marker: str) -> bytes:
        del marker
        shape = MARK + b''.join(long_int(n) for n in dims) + TUPLE
        return pickle_program(_array(shape, _dtype('f8'), latin1_bytes(b'')))

    return build


def dtype_newobj_without_init(marker: str) -> bytes:
    """NEWOBJ of numpy.dtype without arguments, used by an array."""
    del marker
    spec = global_('numpy', 'dtype') + EMPTY_TUPLE + NEWOBJ
    return pickle_program(
        _array(integer(1) + TUPLE1, spec, latin1_bytes(b'\0' * 8))
    )


def dtype_newobj_object(marker: str) -> bytes:
    """NEWOBJ of numpy.dtype('O8'): the object dtype by the other opcode."""
    del marker
    spec = global_('numpy', 'dtype') + text('O8') + TUPLE1 + NEWOBJ
    return pickle_program(
        _array(integer(1) + TUPLE1, spec, latin1_bytes(b'\0' * 8))
    )


def ndarray_reduce(marker: str) -> bytes:
    """REDUCE of numpy.ndarray((2**40,)): numpy would allocate 8 TB."""
    del marker
    return pickle_program(
        global_('numpy', 'ndarray'),
        long_int(1 << 40),
        TUPLE1,
        TUPLE1,
        REDUCE,
    )


def ndarray_newobj(marker: str) -> bytes:
    """NEWOBJ of numpy.ndarray with a shape."""
    del marker
    return pickle_program(
        global_('numpy', 'ndarray'),
        long_int(1 << 40),
        TUPLE1,
        TUPLE1,
        NEWOBJ,
    )


def scalar_newobj(marker: str) -> bytes:
    """NEWOBJ... of the scalar function: a REDUCE without bytes."""
    del marker
    return pickle_program(
        global_('numpy._core.multiarray', 'scalar'),
        _dtype('f8'),
        TUPLE1,
        REDUCE,
    )


def shared_array_copies(marker: str) -> bytes:
    """One 1 MiB array shared by 400 HistoryBuffers (400 copies)."""
    del marker
    values = 1 << 17
    parts = [
        _array(
            long_int(values) + TUPLE1,
            _dtype('f8'),
            latin1_bytes(b'\0' * (8 * values)),
        ),
        put(1),
        EMPTY_LIST,
    ]
    for _ in range(400):
        parts += [
            _HISTORY_BUFFER,
            EMPTY_TUPLE,
            NEWOBJ,
            EMPTY_DICT,
            text('max_length'),
            long_int(1 << 20),
            SETITEM,
            text('_log_history'),
            get(1),
            SETITEM,
            text('_count_history'),
            get(1),
            SETITEM,
            BUILD,
            APPEND,
        ]
    return pickle_program(*parts)


def shared_reference_lists(marker: str) -> bytes:
    """Optimizer state of 60 shared tuples: 2**60 entries to a reader.

    torch accepts the file (only lists and floats); a recursive reader
    such as the optimizer's state casting never finishes.
    """
    del marker
    return pickle_program(
        EMPTY_DICT,
        text('optimizer'),
        EMPTY_DICT,
        text('state'),
        shared_tuples(60),
        SETITEM,
        SETITEM,
    )


def reference_cycle(marker: str) -> bytes:
    """A list that holds itself."""
    del marker
    return pickle_program(
        EMPTY_DICT,
        text('meta'),
        EMPTY_LIST,
        put(1),
        get(1),
        APPEND,
        SETITEM,
    )


def deep_nesting(marker: str) -> bytes:
    """Lists nested 100000 deep (recursive readers overflow the stack)."""
    del marker
    depth = 100000
    return pickle_program(
        EMPTY_DICT,
        text('meta'),
        EMPTY_LIST * depth,
        APPEND * (depth - 1),
        SETITEM,
    )


def meta_config_code(marker: str) -> bytes:
    """``meta['config']`` that runs code: mmengine's resume execs it."""
    code = f"x = __import__('os').system('touch {marker}')\n"
    return pickle_program(
        EMPTY_DICT,
        text('meta'),
        EMPTY_DICT,
        text('epoch'),
        integer(0),
        SETITEM,
        text('iter'),
        integer(1),
        SETITEM,
        text('config'),
        text(code),
        SETITEM,
        SETITEM,
        text('state_dict'),
        EMPTY_DICT,
        SETITEM,
    )


def parameter_forged_class(marker: str) -> bytes:
    """``_rebuild_parameter_with_state`` setting ``__class__``."""
    del marker
    return pickle_program(
        global_('torch._utils', '_rebuild_parameter_with_state'),
        MARK,
        global_('torch', 'Tensor'),
        EMPTY_TUPLE,
        NEWOBJ,
        NEWFALSE,
        global_('collections', 'OrderedDict'),
        EMPTY_TUPLE,
        REDUCE,
        EMPTY_DICT,
        text('__class__'),
        global_('collections', 'OrderedDict'),
        SETITEM,
        NONE,
        TUPLE2,
        TUPLE,
        REDUCE,
    )


#: name -> builder(marker) -> data.pkl bytes.
PICKLES: Dict[str, Callable[[str], bytes]] = {
    'getattr_gadget': getattr_gadget,
    'os_system_global': os_system_global,
    'eval_global': eval_global,
    'reduce_unlisted_function': reduce_unlisted_function,
    'history_buffer_hostile_state': history_buffer_hostile_state,
    'numpy_object_array': numpy_object_array,
    'history_buffer_reduce_amplified': history_buffer_reduce_amplified,
    'history_buffer_reduce_object': history_buffer_reduce_object,
    'history_buffer_reduce_junk_length': history_buffer_reduce_junk_length,
    'history_buffer_newobj_args': history_buffer_newobj_args,
    'history_buffer_never_built': history_buffer_never_built,
    'array_shape_2e32x2e32': _overflow_shape(1 << 32, 1 << 32),
    'array_shape_2e61x8': _overflow_shape(1 << 61, 8),
    'array_shape_2e64': _overflow_shape(1 << 64),
    'dtype_newobj_without_init': dtype_newobj_without_init,
    'dtype_newobj_object': dtype_newobj_object,
    'ndarray_reduce': ndarray_reduce,
    'ndarray_newobj': ndarray_newobj,
    'scalar_without_bytes': scalar_newobj,
    'shared_array_copies': shared_array_copies,
    'shared_reference_amplification': shared_reference_lists,
    'reference_cycle': reference_cycle,
    'deep_nesting': deep_nesting,
    'meta_config_code': meta_config_code,
    'parameter_forged_class': parameter_forged_class,
}

#: Files that torch's own loader accepts (only plain types, or torch's own
#: functions): refused by the project's checks of what was loaded, which
#: plain ``torch.load`` and mmengine's loaders do not make.
ACCEPTED_BY_TORCH = {
    'shared_reference_amplification',
    'reference_cycle',
    'deep_nesting',
    'meta_config_code',
}

#: Files that cost memory or time where a check is missing: loaded only in
#: a child process with an address-space cap (``test_hostile_files``).
AMPLIFYING = {
    'history_buffer_reduce_amplified',
    'history_buffer_newobj_args',
    'array_shape_2e32x2e32',
    'array_shape_2e61x8',
    'ndarray_reduce',
    'ndarray_newobj',
    'shared_array_copies',
    'shared_reference_amplification',
    'deep_nesting',
}


def _zip_without_data_pkl(path) -> None:
    records = _template()
    write_zip(
        path, {k: v for k, v in records.items() if not k.endswith('.pkl')}
    )


def _tensor_records() -> Dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save({'weight': torch.ones(64)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip_missing_storage(path) -> None:
    """``data.pkl`` of a tensor whose storage record was removed."""
    records = _tensor_records()
    write_zip(path, {k: v for k, v in records.items() if '/data/' not in k})


def _zip_truncated_storage(path) -> None:
    """A tensor's storage record holding half the bytes it declares."""
    records = _tensor_records()
    (storage,) = [k for k in records if '/data/' in k]
    records[storage] = records[storage][: len(records[storage]) // 2]
    write_zip(path, records)


def _zip_garbage_data_pkl(path) -> None:
    """``data.pkl`` replaced by bytes that are not a pickle."""
    write_checkpoint(path, b'not a pickle\n' * 4)


#: name -> writer(path): damaged archives.
ARCHIVES: Dict[str, Callable] = {
    'zip_without_data_pkl': _zip_without_data_pkl,
    'zip_missing_storage': _zip_missing_storage,
    'zip_truncated_storage': _zip_truncated_storage,
    'zip_garbage_data_pkl': _zip_garbage_data_pkl,
}

ALL = sorted(PICKLES) + sorted(ARCHIVES)


def craft(name: str, path, marker: str) -> None:
    """Write the crafted checkpoint ``name`` to ``path``."""
    if name in PICKLES:
        write_checkpoint(path, PICKLES[name](marker))
    else:
        ARCHIVES[name](path)
