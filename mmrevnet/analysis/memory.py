"""Bytes saved for backward: one measurement shared by tests and tools.

:class:`SavedTensorCounter` installs
:func:`torch.autograd.graph.saved_tensors_hooks` for the duration of a
forward pass and records every tensor autograd saves for backward. It
counts **distinct storages**: views of one storage (``x``, ``x.t()``,
``x[0]``) and a tensor saved by several nodes count once, with the size of
the whole storage, which is what stays allocated. Parameters passed as
``exclude`` are not counted (they are resident whether or not anything is
saved). BatchNorm running buffers are never saved for backward, so they
need no exclusion.

What passes through the hooks:

* tensors saved by built-in ops (conv inputs, BN inputs, ReLU outputs ...);
* tensors saved with ``ctx.save_for_backward`` in a custom
  :class:`torch.autograd.Function` (e.g. the stage end ``(x_T, v_T)`` of
  the memory-saving momentum stage);
* the inputs of a non-reentrant ``torch.utils.checkpoint`` region, which
  checkpoint saves through an internal Function *before* installing its
  own hooks; the activations inside the region go to checkpoint's hooks
  (the innermost hooks win) and are therefore not counted, matching what
  checkpointing keeps alive.

What does not: tensors kept as plain attributes of ``ctx`` (a custom
Function's RNG states, for instance) and anything held outside autograd.

The pack hook returns the tensor itself (the unpack hook is the identity),
so the graph and the backward pass are unchanged. While the counter is
active it also holds a reference to every counted storage, so that a
storage freed and re-allocated at the same address during the measured
forward cannot be mistaken for one already counted; the references are
dropped on exit.

Example:
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    >>> x = torch.randn(4, 8, requires_grad=True)
    >>> with SavedTensorCounter(exclude=model.parameters()) as counter:
    ...     loss = model(x).sum()
    >>> counter.bytes  # x (128 B) and the ReLU output (128 B)
    256
"""

from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    'SavedTensorCounter',
    'SavedStorage',
    'saved_bytes',
    'cuda_peak_memory',
]

_MIB = float(2**20)

_Key = Tuple[str, int, int]


def _storage_key(tensor: Tensor) -> Optional[Tuple[_Key, int, object]]:
    """``(key, nbytes, storage)`` of ``tensor``'s storage, or None."""
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError, TypeError):
        # Sparse or otherwise storage-less tensors: count their elements.
        nbytes = tensor.numel() * tensor.element_size()
        return (('nostorage', id(tensor), 0), nbytes, tensor)
    nbytes = storage.nbytes()
    data_ptr = storage.data_ptr()
    device = tensor.device
    key = (f'{device.type}:{device.index}', data_ptr, nbytes)
    if data_ptr == 0:
        # Empty or meta storages have no address to share.
        key = ('empty', id(storage), nbytes)
    return key, nbytes, storage


class SavedStorage:
    """One distinct storage saved for backward.

    Attributes:
        nbytes (int): Size of the whole storage in bytes.
        shape (tuple): Shape of the first tensor seen on this storage.
        dtype (torch.dtype): Its dtype.
        device (torch.device): Its device.
        count (int): How many saved tensors referred to this storage.
    """

    __slots__ = ('nbytes', 'shape', 'dtype', 'device', 'count')

    def __init__(self, tensor: Tensor, nbytes: int):
        self.nbytes = nbytes
        self.shape = tuple(tensor.shape)
        self.dtype = tensor.dtype
        self.device = tensor.device
        self.count = 1

    def __repr__(self) -> str:
        return (
            f'SavedStorage(nbytes={self.nbytes}, shape={self.shape}, '
            f'dtype={self.dtype}, count={self.count})'
        )


class SavedTensorCounter:
    """Count bytes of distinct storages saved for backward during a forward.

    Args:
        exclude (Iterable[Tensor]): Tensors whose storages are not counted,
            typically ``model.parameters()``. Consumed once, at
            construction. Defaults to ().

    Attributes:
        bytes (int): Bytes of distinct saved storages (excluded ones left
            out).
        mib (float): The same in MiB.
        storages (list[SavedStorage]): The counted storages, in the order
            they were first saved.
        num_saved (int): Saved tensors seen, including repeats and
            excluded ones.
        excluded_bytes (int): Bytes of distinct excluded storages that
            were saved.

    The counter may be entered once per measurement; entering it again
    starts a new count.
    """

    def __init__(self, exclude: Iterable[Tensor] = ()):
        self._exclude = set()
        for tensor in exclude:
            found = _storage_key(tensor)
            if found is not None:
                self._exclude.add(found[0])
        self._hooks = None
        self._alive: List[object] = []
        self._reset()

    def _reset(self) -> None:
        self._seen: Dict[_Key, SavedStorage] = {}
        self._excluded_seen: Dict[_Key, int] = {}
        self.storages: List[SavedStorage] = []
        self.num_saved = 0

    # -- hooks ---------------------------------------------------------
    def _pack(self, tensor: Tensor) -> Tensor:
        self.num_saved += 1
        found = _storage_key(tensor)
        if found is not None:
            key, nbytes, storage = found
            if key in self._exclude:
                self._excluded_seen[key] = nbytes
            elif key in self._seen:
                self._seen[key].count += 1
            else:
                record = SavedStorage(tensor, nbytes)
                self._seen[key] = record
                self.storages.append(record)
                self._alive.append(storage)
        # Never the tensor itself: a saved *output* would then hold its own
        # grad_fn, a cycle through C++ that Python's gc cannot collect, and
        # the whole graph of every measured step would stay allocated.
        return tensor.detach()

    @staticmethod
    def _unpack(tensor: Tensor) -> Tensor:
        return tensor

    # -- context manager -----------------------------------------------
    def __enter__(self) -> 'SavedTensorCounter':
        if self._hooks is not None:
            raise RuntimeError('SavedTensorCounter is already active')
        self._reset()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, self._unpack
        )
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        hooks, self._hooks = self._hooks, None
        self._alive = []
        hooks.__exit__(*exc_info)

    # -- results -------------------------------------------------------
    @property
    def bytes(self) -> int:
        return sum(record.nbytes for record in self.storages)

    @property
    def mib(self) -> float:
        return self.bytes / _MIB

    @property
    def excluded_bytes(self) -> int:
        return sum(self._excluded_seen.values())

    def __repr__(self) -> str:
        return (
            f'SavedTensorCounter(bytes={self.bytes}, '
            f'storages={len(self.storages)}, '
            f'num_saved={self.num_saved})'
        )


def saved_bytes(fn: Callable, *inputs, exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of distinct storages saved for backward by ``fn(*inputs)``.

    The output of ``fn`` (and with it the graph) is dropped after the
    count. Pass ``exclude=model.parameters()`` to leave parameters out.
    """
    with SavedTensorCounter(exclude=exclude) as counter:
        output = fn(*inputs)
    del output
    return counter.bytes


def cuda_peak_memory(fn: Callable, *inputs, device=None) -> Optional[int]:
    """Peak CUDA memory allocated while running ``fn(*inputs)``, in bytes.

    Resets the peak statistics of ``device`` (default: the current CUDA
    device), synchronises before and after, and returns
    ``torch.cuda.max_memory_allocated``, i.e. the peak including whatever
    was already allocated when ``fn`` started. Returns None when CUDA is not
    available, so callers can run on CPU unchanged.
    """
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn(*inputs)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)
