"""What a training step holds in memory, measured on its device.

:func:`step_peak` is the whole peak of one training step (parameters,
buffers, gradients, activations, heads and loss): on CUDA the caching
allocator's peak, on the CPU the allocator's events replayed from torch's
profiler (:func:`cpu_step_peak`). :func:`optimizer_state_bytes` is what
an optimizer's first ``step()`` adds, and :func:`device_memory` what the
device has. The memory planner (:mod:`.memory_budget`) and the
``max_fit`` tool measure with them.
"""

import gc
import itertools
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    'PhaseMarks',
    'cpu_phase_peaks',
    'cpu_step_peak',
    'step_phase_peaks',
    'step_peak',
    'storage_bytes',
    'optimizer_state',
    'optimizer_state_bytes',
    'device_memory',
]


#: Name of the profiler ranges that :class:`PhaseMarks` records on the CPU.
PHASE_MARK = 'mmrevnet::step_phase'


class PhaseMarks:
    """Marks that split a step's peak into phases (:func:`step_phase_peaks`).

    The step sets them from inside, e.g. from tensor hooks in its
    backward. On the CPU a mark is an empty profiler range, ordered with
    the allocator's events; on CUDA it reads and resets the allocator's
    peak.

    Args:
        device (torch.device): The device the step runs on.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self._cuda_peaks: Optional[List[int]] = None

    def mark(self) -> None:
        """End the current phase of the step being measured."""
        if self.device.type == 'cuda':
            if self._cuda_peaks is not None:
                self._cuda_peaks.append(
                    torch.cuda.max_memory_allocated(self.device)
                )
                torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with torch.profiler.record_function(PHASE_MARK):
                pass

    def begin(self) -> None:
        """Start recording a step's phases (CUDA; a no-op on the CPU)."""
        self._cuda_peaks = []

    def end(self) -> List[int]:
        """Stop recording; the CUDA peaks of the phases ended by marks."""
        peaks, self._cuda_peaks = self._cuda_peaks or [], None
        return peaks


def cpu_phase_peaks(run: Callable[[], None]) -> Tuple[int, ...]:
    """Peak bytes the CPU allocator holds during ``run()`` above its start,
    per phase.

    Replays the allocations and frees that :func:`torch.profiler.profile`
    records with ``profile_memory=True``, in order; a free of memory
    allocated before ``run`` is ignored. Reads the profiler's event tree
    through ``kineto_results.experimental_event_tree()`` and
    ``torch._C._profiler._EventType`` (torch has no public per-event
    allocator record; ``tests/test_engine/test_step_memory.py`` fails if
    they change).

    Args:
        run (Callable[[], None]): The step; it may set
            :class:`PhaseMarks` marks.

    Returns:
        tuple[int]: One peak per stretch between marks (one without
        marks); a phase starts from what is held at its mark.
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True
        ) as prof:
            run()
    finally:
        if gc_was_enabled:
            gc.enable()
    # (time, order, pointer, size); a mark has no pointer.
    events = []
    stack = list(
        reversed(prof.profiler.kineto_results.experimental_event_tree())
    )
    while stack:
        event = stack.pop()
        kind, fields = event.typed
        if kind == _EventType.Allocation and fields.device.type == 'cpu':
            events.append(
                (
                    event.start_time_ns,
                    len(events),
                    fields.ptr,
                    fields.alloc_size,
                )
            )
        elif kind == _EventType.TorchOp and event.name == PHASE_MARK:
            events.append((event.start_time_ns, len(events), None, 0))
        stack.extend(reversed(event.children))
    events.sort()
    live: Dict[int, int] = {}
    current = peak = 0
    peaks = []
    for _, _, ptr, size in events:
        if ptr is None:
            peaks.append(peak)
            peak = current
        elif size > 0:
            live[ptr] = size
            current += size
            peak = max(peak, current)
        else:
            current -= live.pop(ptr, 0)
    return tuple(peaks) + (peak,)


def cpu_step_peak(run: Callable[[], None]) -> int:
    """Peak bytes the CPU allocator holds during ``run()`` above its start
    (:func:`cpu_phase_peaks` over the whole run)."""
    return max(cpu_phase_peaks(run))


def storage_bytes(tensors: Iterable[Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def step_phase_peaks(
    model: nn.Module,
    run_step: Callable[[], None],
    device: torch.device,
    resident: Sequence[Tensor] = (),
    marks: Optional[PhaseMarks] = None,
) -> Tuple[int, ...]:
    """Whole step peak in bytes, per phase of the step.

    Gradients are set to None before and after, as ``zero_grad`` does.

    Args:
        model (nn.Module): The model the step trains.
        run_step (Callable[[], None]): One forward and backward.
        device (torch.device): Where it runs.
        resident (Sequence[Tensor]): Tensors held before the step besides
            the parameters and buffers (an optimizer's state), counted on
            the CPU (CUDA's allocator counts them itself). Defaults to ().
        marks (PhaseMarks, optional): The marks ``run_step`` sets.
            Defaults to None (one phase).

    Returns:
        tuple[int]: What the device holds at the worst moment of each
        stretch between marks.
    """
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        if marks is not None:
            marks.begin()
        try:
            run_step()
            torch.cuda.synchronize(device)
        finally:
            ended = [] if marks is None else marks.end()
        peaks = ended + [torch.cuda.max_memory_allocated(device)]
    else:
        held = storage_bytes(
            itertools.chain(model.parameters(), model.buffers(), resident)
        )
        peaks = [held + peak for peak in cpu_phase_peaks(run_step)]
    model.zero_grad(set_to_none=True)
    return tuple(peaks)


def step_peak(
    model: nn.Module,
    run_step: Callable[[], None],
    device: torch.device,
    resident: Sequence[Tensor] = (),
) -> int:
    """Whole step peak in bytes: what the device holds at the worst moment
    (:func:`step_phase_peaks` without marks)."""
    return max(step_phase_peaks(model, run_step, device, resident))


def optimizer_state_bytes(optimizer: Optional[torch.optim.Optimizer]) -> int:
    """Bytes the first ``step()`` of ``optimizer`` will allocate.

    0 once the state exists (resumed, or after a step). SGD keeps one
    buffer per parameter with momentum, none without; Adam-like
    optimizers two (three with amsgrad); others are counted as two.
    """
    if optimizer is None or any(optimizer.state.values()):
        return 0
    total = 0
    for group in optimizer.param_groups:
        name = type(optimizer).__name__
        if name == 'SGD':
            buffers = 1 if group.get('momentum', 0) else 0
        elif name in ('Adam', 'AdamW', 'NAdam', 'RAdam', 'Adamax'):
            buffers = 3 if group.get('amsgrad', False) else 2
        else:
            buffers = 2
        params = [p for p in group['params'] if p.requires_grad]
        total += buffers * sum(p.numel() * p.element_size() for p in params)
    return total


def optimizer_state(optimizer) -> List[Tensor]:
    """The tensors an optimizer already holds (after a resume)."""
    if optimizer is None:
        return []
    return [
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor)
    ]


def device_memory(
    device: torch.device, held_bytes: int = 0
) -> Tuple[int, int]:
    """``(total, available)`` bytes of ``device`` for this process.

    Available: what the device has free plus what this process holds
    already and counts in its step peaks (on CUDA the caching
    allocator's reserved memory; on the CPU ``held_bytes``). The host's
    RAM (``MemAvailable``) stands for the CPU's.
    """
    if device.type == 'cuda':
        free, total = torch.cuda.mem_get_info(device)
        return int(total), int(free + torch.cuda.memory_reserved(device))
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    free = total
    try:
        with open('/proc/meminfo') as meminfo:
            for line in meminfo:
                if line.startswith('MemAvailable:'):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(total), int(free + held_bytes)
