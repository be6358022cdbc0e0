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

import dataclasses
import gc
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    'SavedTensorCounter',
    'SavedStorage',
    'saved_bytes',
    'cuda_peak_memory',
    'LiveTensor',
    'StepPeak',
    'step_peak',
    'step_peak_bytes',
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


@dataclasses.dataclass(frozen=True)
class StepPeak:
    """What :func:`step_peak` measured in one training step.

    Attributes:
        peak_bytes (int): Peak of live bytes above the start of the step,
            excluded allocations left out.
        end_bytes (int): Bytes the step allocated that are still live at
            its end, excluded ones left out (0 for a step that keeps
            nothing).
        excluded_bytes (int): Bytes allocated during the step that were
            left out: the parameters' gradients (and storages of
            ``exclude``) live at the end.
        allocated_bytes (int): All counted bytes allocated during the step.
        num_allocations (int): Counted allocations.
        peak_op (str, optional): The operator whose allocation reached the
            peak (None when nothing was allocated).
        cuda_step_peak_bytes (int, optional): On CUDA,
            ``torch.cuda.max_memory_allocated`` of the same step minus
            ``torch.cuda.memory_allocated`` before it (gradients included,
            caching-allocator block sizes); None on CPU.
        cuda_start_bytes (int, optional): On CUDA,
            ``torch.cuda.memory_allocated`` before the step (parameters,
            buffers, optimizer state, other models); None on CPU, whose
            allocator keeps no such total.
        peak_site (str, optional): With ``trace_modules``: where the
            allocation that reached the peak was made, as
            ``'<phase> <module>'`` (see :class:`LiveTensor`).
        live_at_peak (tuple[LiveTensor], optional): With
            ``trace_modules``: every counted allocation live at the peak,
            largest first.
    """

    peak_bytes: int
    end_bytes: int
    excluded_bytes: int
    allocated_bytes: int
    num_allocations: int
    peak_op: Optional[str] = None
    cuda_step_peak_bytes: Optional[int] = None
    cuda_start_bytes: Optional[int] = None
    peak_site: Optional[str] = None
    live_at_peak: Optional[Tuple['LiveTensor', ...]] = None

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / _MIB


@dataclasses.dataclass(frozen=True)
class LiveTensor:
    """One allocation live at the step peak (``step_peak(trace_modules=)``).

    Attributes:
        nbytes (int): Its size.
        op (str): The operator that allocated it, e.g.
            ``'aten::convolution_backward'``.
        phase (str): ``'forward'`` (made by the forward pass),
            ``'backward'`` (by the backward of an operator of the forward)
            or ``'recompute'`` (by a forward run again inside a backward,
            as memory-saving modules do).
        module (str): The module that ran the operator (for
            ``'backward'``: the module whose forward recorded the operator
            differentiated), by its name in the traced model; ``''`` for
            the model itself or code outside any module (the loss).
    """

    nbytes: int
    op: str
    phase: str
    module: str

    @property
    def site(self) -> str:
        return f'{self.phase} {self.module or "<top>"}'


_SCOPE = 'mmrevnet.module::'
_BACKWARD = 'autograd::engine::evaluate_function: '


class _ModuleScopes:
    """Labels every call of ``model``'s modules with a profiler range, so
    that allocations can be traced to the module that made them."""

    def __init__(self, model: nn.Module):
        self._open: List[object] = []
        self._handles = []
        for name, module in model.named_modules():
            self._handles.append(
                module.register_forward_pre_hook(self._enter_hook(name))
            )
            self._handles.append(
                module.register_forward_hook(self._exit, always_call=True)
            )

    def _enter_hook(self, name: str):
        def enter(module, args):
            scope = torch.autograd.profiler.record_function(_SCOPE + name)
            scope.__enter__()
            self._open.append(scope)

        return enter

    def _exit(self, module, args, output):
        self._open.pop().__exit__(None, None, None)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        while self._open:
            self._open.pop().__exit__(None, None, None)


def _site(event, module_of_sequence: Dict[int, str]) -> Tuple[str, str, str]:
    """``(op, phase, module)`` of an allocation event (see LiveTensor)."""
    from torch._C._profiler import _EventType

    op, phase, module = '', 'forward', ''
    boundary = False  # passed the innermost module range or backward node
    node = event.parent
    while node is not None:
        name = node.name
        if node.typed[0] == _EventType.TorchOp:
            if name.startswith(_BACKWARD):
                if not boundary:
                    op, phase = name[len(_BACKWARD) :], 'backward'
                elif phase == 'forward':
                    phase = 'recompute'
                boundary = True
                if not module:
                    # The module whose forward recorded this node's
                    # operator; code outside modules (a head's own
                    # forward run again by its recomputation) takes the
                    # module of the enclosing backward node.
                    sequence = node.typed[1].sequence_number
                    module = module_of_sequence.get(sequence, '')
                if module and phase != 'forward':
                    break
            elif name.startswith(_SCOPE):
                boundary = True
                if not module:
                    module = name[len(_SCOPE) :]
            elif not boundary:
                op = name
        node = node.parent
    return op, phase, module


def _allocation_events(
    result, device: torch.device, sites: bool = False
) -> List[tuple]:
    """``(time, tid, ptr, size, op, site)`` of the allocator events on
    ``device``; ``site`` is :func:`_site`'s triple when ``sites``, else None.

    Allocations and frees are leaves of the profiler's event tree, under
    the operator that made them; they are put in time order, ties kept in
    the tree's own order (a thread's events are recorded in sequence).
    """
    from torch._C._profiler import _EventType

    events = []
    module_of_sequence: Dict[int, str] = {}
    stack = list(reversed(result.experimental_event_tree()))
    while stack:
        event = stack.pop()
        kind = event.typed[0]
        if kind == _EventType.Allocation:
            fields = event.typed[1]
            if fields.device == device:
                parent = event.parent
                site = None
                if sites and fields.alloc_size > 0:
                    site = _site(event, module_of_sequence)
                events.append(
                    (
                        event.start_time_ns,
                        len(events),
                        fields.ptr,
                        fields.alloc_size,
                        None if parent is None else parent.name,
                        site,
                    )
                )
        elif sites and kind == _EventType.TorchOp:
            sequence = event.typed[1].sequence_number
            if sequence >= 0 and sequence not in module_of_sequence:
                # The first op with a sequence number is the forward one
                # (its backward node carries the same number later).
                module_of_sequence[sequence] = _enclosing_module(event)
        stack.extend(reversed(event.children))
    events.sort(key=lambda e: e[:2])
    return events


def _enclosing_module(event) -> str:
    node = event.parent
    while node is not None:
        if node.name.startswith(_SCOPE):
            return node.name[len(_SCOPE) :]
        node = node.parent
    return ''


def step_peak(
    model: nn.Module,
    step: Callable[[], Tensor],
    exclude: Iterable[Tensor] = (),
    device: Optional[torch.device] = None,
    set_grads_to_none: bool = True,
    trace_modules: bool = False,
) -> StepPeak:
    """Peak live tensor bytes of one training step, above its start.

    Runs ``loss = step(); loss.backward()`` once under
    :func:`torch.profiler.profile` with ``profile_memory=True`` and replays
    the allocator's own records of that step: every allocation and free of
    the device's allocator (c10's CPU allocator, or the CUDA caching
    allocator) with its address and size, in order. The bytes live above
    the start after each event are the running sum of the sizes allocated
    during the step and not yet freed; the result is the largest of them.
    This counts everything the step allocates through torch, whether
    autograd saves it or not: activations, temporaries inside and between
    operators, the gradients flowing through backward and autograd's
    buffers. It is exact, not sampled: the sum changes only at allocator
    events and every one of them is replayed.

    Left out, because they are the same for every variant of a model and
    would hide the differences at small sizes:

    * parameters, buffers, optimizer state and anything else allocated
      before the step: only allocations made during the step are counted,
      and a free of memory allocated before it is ignored (the step never
      owned it);
    * the parameters' gradients: identified after the step by storage, the
      allocation at the address of ``p.grad``'s storage that is still live
      at the end (the buffer backward produced and ``AccumulateGrad``
      kept, or its copy) is left out from the moment it was allocated; so
      are allocations of storages in ``exclude`` that are live at the end.
      Memory freed before the end was never a parameter's gradient, even
      at a reused address, and is counted. A gradient summed from several
      parts (a parameter used twice) counts its later parts as
      temporaries until they are added in.

    Deliberately not the profiler's memory categories (``MemoryProfile``,
    PARAMETER / GRADIENT / OPTIMIZER_STATE): they are inferred from the
    data flow by heuristics and can misfile. In the benchmark's
    ResNetV1c-50-D8 ``with_cp`` step they file 61 MiB of activation-sized
    allocations (16 tensors, none a parameter's gradient) as GRADIENT.
    None of them is live at that step's peak, so there the two measures
    agree, as they do for the plain and m-RevNet steps; identity of
    storages needs no inference.

    The result is deterministic for a given model, input and thread count:
    the step's allocations are a function of the operators run. To keep
    it so, grads are set to None first (as ``zero_grad`` does in
    training), so that backward allocates them instead of accumulating
    into old ones, and Python's cyclic garbage collector is paused during
    the step (refcounting still frees everything acyclic at once). The
    plain and with_cp backbone-50-D8 steps of the benchmark gave the same
    peaks at one and two threads. Memory that is not a torch tensor
    (oneDNN's scratch space, Python objects) is not seen.

    Args:
        model (nn.Module): The model ``step`` trains; its parameters'
            gradients are left out.
        step (Callable[[], Tensor]): Runs the forward and returns the
            scalar loss; this function runs the backward.
        exclude (Iterable[Tensor]): More tensors whose storages are left
            out if the step allocates them (read after the step).
            Defaults to ().
        device (torch.device, optional): The allocator measured. Defaults
            to the device of the model's first parameter, else the CPU.
        set_grads_to_none (bool): ``model.zero_grad(set_to_none=True)``
            before the step. Defaults to True.
        trace_modules (bool): Label every module call of ``model`` with a
            profiler range (forward hooks, removed after the step) and
            report where the peak sits: :attr:`StepPeak.peak_site` and
            :attr:`StepPeak.live_at_peak`. The hooks return nothing, so
            the step computes and allocates what it does untraced.
            Defaults to False.

    Returns:
        StepPeak: The peak and what it was made of. The gradients the step
        produced are left in place.
    """
    from torch.profiler import ProfilerActivity, profile

    if device is None:
        first = next(model.parameters(), None)
        device = torch.device('cpu') if first is None else first.device
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    on_cuda = device.type == 'cuda'
    if set_grads_to_none:
        model.zero_grad(set_to_none=True)
    gc.collect()
    resident = None
    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    scopes = _ModuleScopes(model) if trace_modules else None
    try:
        # Allocator events are recorded by the host-side profiler for
        # every device; kernel traces (CUPTI) are not needed.
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            loss = step()
            loss.backward()
            del loss
            if on_cuda:
                torch.cuda.synchronize(device)
    finally:
        if scopes is not None:
            scopes.remove()
        if gc_was_enabled:
            gc.enable()
    cuda_peak = None
    if on_cuda:
        cuda_peak = torch.cuda.max_memory_allocated(device) - resident
    keep = [p for p in model.parameters()]
    keep += [p.grad for p in model.parameters() if p.grad is not None]
    keep += list(exclude)
    excluded_ptrs = {
        t.untyped_storage().data_ptr() for t in keep if t.device == device
    }
    events = _allocation_events(
        prof.profiler.kineto_results, device, sites=trace_modules
    )

    # A storage live at the end is the last allocation at its address
    # that is not followed by a free.
    last_alloc: Dict[int, int] = {}
    for index, (_, _, ptr, size, _, _) in enumerate(events):
        if size > 0:
            last_alloc[ptr] = index
        elif size < 0:
            last_alloc.pop(ptr, None)
    skip = {index for ptr, index in last_alloc.items() if ptr in excluded_ptrs}

    live: Dict[int, int] = {}
    current = peak = allocated = count = excluded = 0
    peak_op, peak_index = None, -1
    for index, (_, _, ptr, size, op, _) in enumerate(events):
        if size > 0:
            if index in skip:
                excluded += size
                continue
            live[ptr] = size
            current += size
            allocated += size
            count += 1
            if current > peak:
                peak, peak_op, peak_index = current, op, index
        elif size < 0:
            # Not found: allocated before the step, or excluded.
            current -= live.pop(ptr, 0)
    peak_site = live_at_peak = None
    if trace_modules:
        peak_site, live_at_peak = _live_at(events, skip, peak_index)
    return StepPeak(
        peak_bytes=peak,
        end_bytes=current,
        excluded_bytes=excluded,
        allocated_bytes=allocated,
        num_allocations=count,
        peak_op=peak_op,
        cuda_step_peak_bytes=cuda_peak,
        cuda_start_bytes=resident,
        peak_site=peak_site,
        live_at_peak=live_at_peak,
    )


def _live_at(events: List[tuple], skip: set, last: int):
    """The site of event ``last`` and the allocations live after it."""
    if last < 0:
        return None, ()
    live: Dict[int, int] = {}
    for index, (_, _, ptr, size, _, _) in enumerate(events[: last + 1]):
        if size > 0 and index not in skip:
            live[ptr] = index
        elif size < 0:
            live.pop(ptr, None)
    tensors = []
    for index in live.values():
        size, (op, phase, module) = events[index][3], events[index][5]
        tensors.append(LiveTensor(size, op, phase, module))
    tensors.sort(key=lambda t: -t.nbytes)
    op, phase, module = events[last][5]
    return LiveTensor(0, op, phase, module).site, tuple(tensors)


def step_peak_bytes(model: nn.Module, step: Callable[[], Tensor], **kwargs):
    """:attr:`StepPeak.peak_bytes` of :func:`step_peak` (same arguments)."""
    return step_peak(model, step, **kwargs).peak_bytes
