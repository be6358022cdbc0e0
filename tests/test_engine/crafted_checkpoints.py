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


#: name -> builder(marker) -> data.pkl bytes.
PICKLES: Dict[str, Callable[[str], bytes]] = {
    'getattr_gadget': getattr_gadget,
    'os_system_global': os_system_global,
    'eval_global': eval_global,
    'reduce_unlisted_function': reduce_unlisted_function,
    'history_buffer_hostile_state': history_buffer_hostile_state,
    'numpy_object_array': numpy_object_array,
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
