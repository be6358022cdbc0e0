"""Turn a backbone's ``memory_budget`` into a memory plan when training starts.

A memory-saving m-RevNet recomputes, in the backward, every block it does
not keep. Its plan (``stored_blocks``: per stage, how many blocks from
its start keep their activations; ``store_stem``) trades memory for
recomputation. :class:`MRevNetMemoryBudgetHook` chooses, before the first
training iteration, on the training device and with the first batch, the
plan of least recomputation whose predicted **whole** training step peak
(parameters, gradients, optimizer state, backbone, heads, loss) fits the
budget, logs it and applies it.

What it measures (:func:`measure_plan_figures`), with the model's own
training step (``model(**data, mode='loss')``, its losses summed, then
the backward), inside the optimizer wrapper's context (autocast when the
config trains in mixed precision):

* the whole step peak of the plans that keep ``k = 0 .. n`` blocks of the
  last stage and nothing else (``n + 1`` steps; 4 for the ResNet
  layouts), and again with the heads stored where they are part of the
  plan (an ``MRevNetEncoderDecoder`` that recomputes its heads), split
  into phases (:class:`~.step_memory.PhaseMarks`): until the end of the
  last stage's backward, then the backward of each earlier block (its
  recomputation starts it). On CUDA the allocator's peak
  (``max_memory_allocated``, all the device memory torch holds, so
  parameters and gradients included); on the CPU the allocator's events
  of the step replayed from the profiler plus the parameters and buffers
  (:mod:`.step_memory`);
* forwards under saved-tensor hooks (one per stage and count ``k``, one
  for the stem, one for the floor): the bytes that keeping the first
  ``k`` blocks of a stage, or the stem, adds to what the step saves for
  the backward;
* the forward time of the stem, of blocks 0 and 1 of every stage and of
  the planned heads (a kept block, or stored heads, save about one
  forward of recomputation).

Predicted peak of a plan (:meth:`PlanFigures.predict_peak`): the largest
of its phases, each the measured peak of that phase plus the saved bytes
of what the plan keeps and is still alive then, plus the optimizer state
the first ``optimizer.step()`` will allocate. Until the end of the last
stage's backward (the heads and the last stage first) everything kept by
earlier stages is alive; in an earlier stage's backward, what it keeps
up to the block being differentiated and what the stages before it keep.
A kept block adds no more than what it saves to any moment of the step,
so this is an upper bound. Every plan is enumerated (3840 for depth 101,
twice as many with the heads), so the choice is exact for the figures
and deterministic given them.

Planning runs a few steps and forwards and changes nothing that training
sees: BN running statistics, the random number generators and the
gradients are restored afterwards, so the first iteration computes what
it computes with the same plan written in the config (tested). Under
distributed training every process measures and rank 0's choice is used
by all.
"""

import contextlib
import dataclasses
import gc
import itertools
import logging
import math
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import Tensor, nn

from .step_memory import (
    PhaseMarks,
    device_memory,
    optimizer_state,
    optimizer_state_bytes,
    step_peak,
    step_phase_peaks,
    storage_bytes,
)

__all__ = [
    'MemoryPlan',
    'PlanFigures',
    'PlanChoice',
    'MemoryBudgetError',
    'choose_plan',
    'apply_plan',
    'measure_plan_figures',
    'plan_for_memory_budget',
    'MRevNetMemoryBudgetHook',
]

_MIB = float(2**20)


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """The backbone arguments a plan sets.

    Args:
        stored_blocks (tuple[int]): Blocks kept per stage, from its start.
        store_stem (bool): Keep the stem's activations. Defaults to False.
        store_heads (bool, optional): Keep the activations of the decode
            and auxiliary heads of an ``MRevNetEncoderDecoder`` instead of
            recomputing them (its ``memory_saving_heads=None``); None
            where the heads are not part of the plan (another segmentor,
            or heads the config already stores). Defaults to None.
    """

    stored_blocks: Tuple[int, ...]
    store_stem: bool = False
    store_heads: Optional[bool] = None

    def as_config(self) -> dict:
        """The plan as backbone config keys (set instead of a budget)."""
        return dict(
            stored_blocks=tuple(self.stored_blocks),
            store_stem=self.store_stem,
        )

    def as_dict(self) -> dict:
        """The plan as plain data (checkpoint ``meta``, JSON):
        ``stored_blocks`` as a list, ``store_heads`` where it is set."""
        plan = dict(
            stored_blocks=list(self.stored_blocks),
            store_stem=self.store_stem,
        )
        if self.store_heads is not None:
            plan['store_heads'] = self.store_heads
        return plan


@dataclasses.dataclass(frozen=True)
class PlanFigures:
    """What planning measured at the first batch.

    Attributes:
        last_stage_peaks (tuple[int]): Step peaks (bytes) of the plans
            keeping ``k = 0 .. n`` blocks of the last stage only, from the
            start of the step to the end of the last stage's backward
            (the whole step where ``earlier_stage_peaks`` is None).
        kept_bytes (tuple[tuple[int]]): Per stage, for ``k = 0 .. n``,
            the bytes saved for backward by its first ``k`` blocks.
        stem_bytes (int): Bytes the stem saves for backward.
        block_seconds (tuple[tuple[float, float]]): Per stage, one
            forward of block 0 and of a momentum block.
        stem_seconds (float): One forward of the stem.
        optimizer_state_bytes (int): What the first optimizer step will
            allocate (0 once its state exists).
        shape (tuple[int]): The batch's input shape.
        stored_heads_peaks (tuple[int], optional): ``last_stage_peaks``
            with the heads' activations stored; None where the heads are
            not part of the plan.
        heads_seconds (float): What recomputing the heads costs: one
            forward of each, and of the units recomputed again inside
            them (``UPerHead``'s lateral convolutions).
        earlier_stage_peaks (tuple[tuple[int]], optional): Per stage but
            the last, the largest step peaks measured in its backward (at
            the floor), over the steps measured: at index ``b`` while its
            block ``b`` is recomputed and differentiated (until the next
            block's, or the stage before's, or the end of the step), at
            index ``n`` from the gradient of its output to its last
            block's; 0 where nothing was marked (a Bottleneck stage's
            block 0, whose backward falls in block 1's phase; frozen
            stages). None: the last stage's peaks are whole step peaks.
    """

    last_stage_peaks: Tuple[int, ...]
    kept_bytes: Tuple[Tuple[int, ...], ...]
    stem_bytes: int
    block_seconds: Tuple[Tuple[float, float], ...]
    stem_seconds: float
    optimizer_state_bytes: int
    shape: Tuple[int, ...]
    stored_heads_peaks: Optional[Tuple[int, ...]] = None
    heads_seconds: float = 0.0
    earlier_stage_peaks: Optional[Tuple[Tuple[int, ...], ...]] = None

    @property
    def heads_planned(self) -> bool:
        """Whether the plans choose ``store_heads`` (the heads were
        measured stored and recomputed)."""
        return self.stored_heads_peaks is not None

    def plans(self) -> List[MemoryPlan]:
        counts = [range(len(table)) for table in self.kept_bytes]
        heads = (False, True) if self.heads_planned else (None,)
        return [
            MemoryPlan(tuple(blocks), stem, store)
            for blocks in itertools.product(*counts)
            for stem in (False, True)
            for store in heads
        ]

    def floor(self) -> MemoryPlan:
        """The plan of least memory: everything recomputed."""
        return MemoryPlan(
            (0,) * len(self.kept_bytes),
            False,
            False if self.heads_planned else None,
        )

    def predict_peak(self, plan: MemoryPlan) -> int:
        """Predicted whole step peak, optimizer state included (bytes).

        Until the end of the last stage's backward, everything the
        earlier stages keep is held: the measured peak of the plan's
        last-stage count plus their kept bytes. In the backward of an
        earlier stage's block ``b`` (measured at the floor), the stages
        before it hold what they keep and the stage holds its kept
        blocks up to ``b`` (all of them while its recomputed blocks,
        which come last, run). The stem's kept bytes are held throughout.
        """
        peaks = self.last_stage_peaks
        if plan.store_heads:
            peaks = self.stored_heads_peaks
        kept = [
            table[count]
            for table, count in zip(self.kept_bytes, plan.stored_blocks)
        ]
        peak = peaks[plan.stored_blocks[-1]] + sum(kept[:-1])
        for stage, block_peaks in enumerate(self.earlier_stage_peaks or ()):
            table, count = self.kept_bytes[stage], plan.stored_blocks[stage]
            before = sum(kept[:stage])
            for block, phase_peak in enumerate(block_peaks):
                # Block ``block`` itself is counted too: the floor
                # recomputes it by channel chunks, holding less than
                # keeping it saves.
                held = table[min(count, block + 1)]
                peak = max(peak, phase_peak + before + held)
        peak += self.optimizer_state_bytes
        return peak + (self.stem_bytes if plan.store_stem else 0)

    def recompute_seconds(self, plan: MemoryPlan) -> float:
        """Forward time the plan's backward spends recomputing."""
        seconds = 0.0 if plan.store_stem else self.stem_seconds
        if plan.store_heads is False:
            seconds += self.heads_seconds
        for table, (transition, momentum), kept in zip(
            self.kept_bytes, self.block_seconds, plan.stored_blocks
        ):
            blocks = len(table) - 1
            seconds += momentum * (blocks - max(kept, 1))
            seconds += transition if kept == 0 else 0.0
        return seconds


@dataclasses.dataclass(frozen=True)
class PlanChoice:
    """The plan chosen for a budget and what it is predicted to cost."""

    plan: MemoryPlan
    budget_bytes: int
    predicted_peak_bytes: int
    recompute_seconds: float
    floor_recompute_seconds: float
    measured_peak_bytes: Optional[int] = None


class MemoryBudgetError(ValueError):
    """No plan's predicted whole step peak fits the memory budget."""


def choose_plan(figures: PlanFigures, budget_bytes: int) -> PlanChoice:
    """The plan of least recomputation whose predicted peak fits.

    Ties go to the smaller peak. Raises :class:`MemoryBudgetError` with
    the smallest predicted peak and what can lower it if none fits.
    """
    best = least = None
    for plan in figures.plans():
        peak = figures.predict_peak(plan)
        if least is None or peak < least[0]:
            least = (peak, plan)
        if peak > budget_bytes:
            continue
        key = (figures.recompute_seconds(plan), peak)
        if best is None or key < best[0]:
            best = (key, plan)
    if best is None:
        raise MemoryBudgetError(
            f'memory_budget of {budget_bytes / _MIB:.1f} MiB: no plan fits '
            f'at input shape {figures.shape}; the smallest predicted whole '
            f'step peak is {least[0] / _MIB:.1f} MiB ({_describe(least[1])}'
            ', optimizer state included). To fit, lower the peak: a '
            'smaller crop (crop_size of the train pipeline), a smaller '
            'batch (train_dataloader.batch_size), or mixed precision '
            "(optim_wrapper=dict(type='AmpOptimWrapper', ...)); or raise "
            'memory_budget'
        )
    (seconds, peak), plan = best
    return PlanChoice(
        plan=plan,
        budget_bytes=int(budget_bytes),
        predicted_peak_bytes=peak,
        recompute_seconds=seconds,
        floor_recompute_seconds=figures.recompute_seconds(figures.floor()),
    )


def _describe(plan: MemoryPlan) -> str:
    text = (
        f'stored_blocks={tuple(plan.stored_blocks)}, '
        f'store_stem={plan.store_stem}'
    )
    if plan.store_heads is not None:
        text += f', store_heads={plan.store_heads}'
    return text


def _planned_heads(model: nn.Module) -> List[nn.Module]:
    """The heads a plan may store: those of an ``MRevNetEncoderDecoder``
    built to recompute them (``memory_saving_heads`` not None)."""
    from ..models.segmentors.encoder_decoder import (
        MRevNetEncoderDecoder,
        segmentor_heads,
    )

    if (
        isinstance(model, MRevNetEncoderDecoder)
        and model.memory_saving_heads is not None
    ):
        return segmentor_heads(model)
    return []


def _heads_stored(model: nn.Module) -> Optional[bool]:
    """Whether the planned heads store now; None if none are planned."""
    from ..models.memory_saving.heads import is_memory_saving

    heads = _planned_heads(model)
    if not heads:
        return None
    return not any(is_memory_saving(head) for head in heads)


def _store_heads(model: nn.Module, store: Optional[bool]) -> None:
    """Store (True) or recompute (False) the planned heads' activations;
    recomputation as the segmentor's ``memory_saving_heads`` and
    ``concat_free`` configure it."""
    from ..models.memory_saving.heads import disable_memory_saving
    from ..models.segmentors.encoder_decoder import (
        enable_memory_saving_heads,
    )

    current = _heads_stored(model)
    if store is None or current is None or store == current:
        return
    if store:
        for head in _planned_heads(model):
            disable_memory_saving(head)
    else:
        enable_memory_saving_heads(
            model, model.memory_saving_heads, nested=model.concat_free
        )


def apply_plan(model: nn.Module, backbone: nn.Module, plan: MemoryPlan):
    """Set ``plan`` on ``backbone`` and on ``model``'s planned heads.

    Args:
        model (nn.Module): The whole model; the heads of an
            ``MRevNetEncoderDecoder`` that recomputes them store or
            recompute as ``plan.store_heads`` says.
        backbone (MRevNet): Its memory-saving backbone.
        plan (MemoryPlan): The plan.

    Raises:
        ValueError: The plan does not match the model: a count per stage
            that the backbone refuses, or ``store_heads`` given (not None)
            for a model whose heads are not planned (or the reverse).
    """
    if (plan.store_heads is None) != (_heads_stored(model) is None):
        raise ValueError(
            f'store_heads={plan.store_heads!r}: a bool for an '
            'MRevNetEncoderDecoder whose heads recompute '
            "(memory_saving_heads='head' or 'module'), None for other "
            'models'
        )
    backbone.set_plan(plan.stored_blocks, plan.store_stem)
    _store_heads(model, plan.store_heads)


class _SavedBytes:
    """Bytes of distinct storages saved for backward, while active.

    For forwards that are counted, never differentiated: the graph keeps
    each saved tensor's storage alive (so no address is counted twice)
    through a detached view. The tensor itself would form, for an output
    its own node saves, a reference cycle through autograd's C++ graph
    that Python's garbage collector cannot see, and every counted forward
    would stay in memory.
    """

    def __init__(self, exclude):
        self.bytes = 0
        self._seen = {p.untyped_storage().data_ptr() for p in exclude}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(
            self._pack, _not_differentiated
        )

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor.detach()

    def __enter__(self):
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


def _not_differentiated(packed: Tensor) -> Tensor:
    raise RuntimeError(
        'a forward counted for its saved bytes is not differentiated'
    )


def _out_of_memory_as_inf(measure: Callable[[], Any]) -> Any:
    """``measure()``, or ``math.inf`` where it ran out of device memory."""
    try:
        return measure()
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return math.inf


def _trainable_from(backbone: nn.Module, layers) -> int:
    """Index of the first stage recomputed in the backward (-1: the stem).

    Stages before it, and the stem, have no trainable parameter and get
    no input that needs a gradient, so nothing of them is recomputed.
    """
    stem = backbone._stem_modules()
    if any(p.requires_grad for m in stem for p in m.parameters()):
        return -1
    for index, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return index
    return len(layers)


def _median_seconds(
    module: Callable, x, device: torch.device, repeats: int = 3
) -> float:
    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    times = []
    with torch.no_grad():
        module(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            module(x)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _nested_units_seconds(model, heads, run_heads, head_inputs, device):
    """Forward time of the units that a head's recomputation recomputes
    once more in its own backward (``nested_units``, with
    ``memory_saving_heads='head'`` and ``concat_free``)."""
    from ..models.segmentors.encoder_decoder import nested_units

    if not (model.concat_free and model.memory_saving_heads == 'head'):
        return 0.0
    units = [unit for head in heads for unit in nested_units(head)]
    inputs = {}
    handles = [
        unit.register_forward_pre_hook(
            lambda module, args: inputs.setdefault(module, args[0])
        )
        for unit in units
    ]
    try:
        with torch.no_grad():
            run_heads(head_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(
        _median_seconds(unit, inputs[unit], device)
        for unit in units
        if unit in inputs
    )


def measure_plan_figures(
    model: nn.Module,
    backbone: nn.Module,
    forward_loss: Callable[[], Tensor],
    device: torch.device,
    optimizer: Optional[torch.optim.Optimizer] = None,
    context: Callable = contextlib.nullcontext,
) -> PlanFigures:
    """Measure what :func:`choose_plan` needs, on ``model``'s device.

    Args:
        model (nn.Module): The whole model trained.
        backbone (MRevNet): Its memory-saving backbone (plans are applied
            to it with ``set_plan``).
        forward_loss (Callable[[], Tensor]): One training forward of
            ``model`` on the batch; returns the summed loss.
        device (torch.device): The training device.
        optimizer (torch.optim.Optimizer, optional): For the state its
            first step allocates, or holds already.
        context (Callable): Returns the context the training forward runs
            in (autocast under mixed precision); the block timings run in
            it too. Defaults to no context.

    The heads of an ``MRevNetEncoderDecoder`` that recomputes them are
    part of the plan: the last stage's peaks are measured once with the
    heads recomputed and once with them stored, and the heads' forward is
    timed. A step that runs out of device memory counts as an infinite
    peak (the plans with more kept blocks in the last stage are then not
    run). The caller restores BN statistics and random number generators.
    """
    blocks = tuple(backbone.stage_blocks)
    layers = [getattr(backbone, name) for name in backbone.res_layers]
    heads = _planned_heads(model)

    def run_step():
        loss = forward_loss()
        loss.backward()

    state = optimizer_state(optimizer)
    _store_heads(model, False if heads else None)
    if device.type == 'cuda':
        # cuDNN's autotuning (mmseg sets cudnn_benchmark) allocates its
        # workspaces in the first steps at a shape.
        backbone.set_plan((0,) * len(blocks), False)
        _out_of_memory_as_inf(lambda: step_peak(model, run_step, device))

    # Marks split each step's peak into the backward phases of the
    # earlier stages (all recomputed in these steps): the gradient of a
    # stage's output starts its phase, the recomputation of each of its
    # blocks (its forward under grad, in the backward) a block's. A
    # Bottleneck transition block recomputes by channel chunks without
    # calling its module: its backward falls in block 1's phase.
    marks = PhaseMarks(device)
    marked: List[Tuple[int, int]] = []
    earlier_peaks = [[0] * (count + 1) for count in blocks[:-1]]

    def mark(label):
        marked.append(label)
        marks.mark()

    def mark_stage(stage):
        def hook(module, args, output):
            if torch.is_grad_enabled() and output.requires_grad:
                output.register_hook(lambda grad: mark((stage, blocks[stage])))

        return hook

    def mark_block(stage, block):
        def hook(module, args):
            # Blocks run in the forward too; only the backward has marks.
            if marked and torch.is_grad_enabled():
                mark((stage, block))

        return hook

    def measure_last_stage():
        """Peaks until the end of the last stage's backward, per count of
        its kept blocks; the earlier phases' go to ``earlier_peaks``."""
        peaks = []
        for kept in range(blocks[-1] + 1):
            backbone.set_plan((0,) * (len(blocks) - 1) + (kept,), False)
            marked.clear()
            phases = _out_of_memory_as_inf(
                lambda: step_phase_peaks(model, run_step, device, state, marks)
            )
            if phases == math.inf:
                return peaks + [math.inf] * (blocks[-1] - kept + 1)
            if len(phases) != len(marked) + 1:
                # Marks lost or doubled: the whole step's peak stands for
                # the first phase, which the prediction adds every kept
                # block to (the bound without phases).
                phases = (max(phases),)
                marked.clear()
            peaks.append(phases[0])
            for (stage, block), peak in zip(marked, phases[1:]):
                row = earlier_peaks[stage]
                row[block] = max(row[block], peak)
        return peaks

    handles = []
    for index, layer in enumerate(layers[:-1]):
        handles.append(layer.register_forward_hook(mark_stage(index)))
        handles.extend(
            block.register_forward_pre_hook(mark_block(index, position))
            for position, block in enumerate(layer)
        )
    try:
        last_peaks = measure_last_stage()
        stored_heads_peaks = None
        if heads:
            _store_heads(model, True)
            try:
                stored_heads_peaks = tuple(measure_last_stage())
            finally:
                _store_heads(model, False)
    finally:
        for handle in handles:
            handle.remove()

    def saved_bytes(stored_blocks, store_stem):
        backbone.set_plan(stored_blocks, store_stem)
        with _SavedBytes(model.parameters()) as counter:
            loss = forward_loss()
        del loss
        return counter.bytes

    # The floor's forward, counted, also yields the inputs of the stem and
    # of the stages (the input of block 0). A recomputed block 0 of real
    # width runs by chunks without its own __call__, so block hooks would
    # miss it; block 1's input is block 0's output, computed when timed.
    inputs: Dict[Tuple[int, int], Tensor] = {}
    handles = []

    def grab(key):
        def hook(module, args):
            inputs.setdefault(key, args[0].detach())

        return hook

    handles.append(backbone.register_forward_pre_hook(grab((0, -1))))
    features = []
    handles.append(
        backbone.register_forward_hook(
            lambda module, args, output: features.append(
                tuple(feature.detach() for feature in output)
            )
        )
    )
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(grab((index, 0))))
    floor = (0,) * len(blocks)
    try:
        floor_bytes = saved_bytes(floor, False)
    finally:
        for handle in handles:
            handle.remove()
    # Kept bytes per stage and count, from counted forwards (keeping a
    # whole stage also drops what its reversed part saves, so the
    # increments are measured, not assumed equal).
    kept_bytes, block_seconds = [], []
    # Frozen leading stages (and a frozen stem) are not recomputed: their
    # inputs and parameters need no gradient.
    trainable = _trainable_from(backbone, layers)
    for index, layer in enumerate(layers):
        table = [0]
        for kept in range(1, blocks[index] + 1):
            plan = floor[:index] + (kept,) + floor[index + 1 :]
            table.append(saved_bytes(plan, False) - floor_bytes)
        kept_bytes.append(tuple(table))
        seconds = (0.0, 0.0)
        if index >= trainable:
            with context():
                first = inputs[(index, 0)]
                seconds = (_median_seconds(layer[0], first, device), 0.0)
                if len(layer) > 1:
                    with torch.no_grad():
                        second = layer[0](first)
                    seconds = (
                        seconds[0],
                        _median_seconds(layer[1], second, device),
                    )
        block_seconds.append(seconds)
    stem_bytes = saved_bytes(floor, True) - floor_bytes
    stem_seconds = 0.0
    if trainable < 0:
        with context():
            stem_seconds = _median_seconds(
                backbone._forward_stem, inputs[(0, -1)], device
            )
    heads_seconds = 0.0
    if heads:
        with torch.no_grad():
            head_inputs = features[0]
            if getattr(model, 'with_neck', False):
                head_inputs = model.neck(head_inputs)

        def run_heads(inputs):
            # The heads' own forward: what their recomputation runs.
            for head in heads:
                head.forward(inputs)

        with context():
            heads_seconds = _median_seconds(run_heads, head_inputs, device)
            heads_seconds += _nested_units_seconds(
                model, heads, run_heads, head_inputs, device
            )
    return PlanFigures(
        last_stage_peaks=tuple(last_peaks),
        kept_bytes=tuple(kept_bytes),
        stem_bytes=int(stem_bytes),
        block_seconds=tuple(block_seconds),
        stem_seconds=stem_seconds,
        optimizer_state_bytes=optimizer_state_bytes(optimizer),
        shape=tuple(inputs[(0, -1)].shape),
        stored_heads_peaks=stored_heads_peaks,
        heads_seconds=heads_seconds,
        earlier_stage_peaks=tuple(tuple(row) for row in earlier_peaks),
    )


class _TrainingStateRestored:
    """Restore buffers (BN statistics), random number generators (torch's,
    CUDA's, Python's and NumPy's) and gradients on exit."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __enter__(self):
        import random

        import numpy as np

        self.buffers = [b.detach().clone() for b in self.model.buffers()]
        self.rng = (
            torch.get_rng_state(),
            random.getstate(),
            np.random.get_state(),
        )
        self.cuda_rng = (
            torch.cuda.get_rng_state(self.device)
            if self.device.type == 'cuda'
            else None
        )
        return self

    def __exit__(self, *exc):
        import random

        import numpy as np

        with torch.no_grad():
            for buffer, saved in zip(self.model.buffers(), self.buffers):
                buffer.copy_(saved)
        torch.set_rng_state(self.rng[0])
        random.setstate(self.rng[1])
        np.random.set_state(self.rng[2])
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.device)
        self.model.zero_grad(set_to_none=True)


def plan_for_memory_budget(
    model: nn.Module,
    backbone: nn.Module,
    forward_loss: Callable[[], Tensor],
    budget_bytes: int,
    optimizer: Optional[torch.optim.Optimizer] = None,
    verify: bool = True,
    context: Callable = contextlib.nullcontext,
) -> Tuple[PlanChoice, PlanFigures]:
    """Measure, choose and apply the plan for ``budget_bytes``.

    Args:
        model (nn.Module): The whole model, in training mode.
        backbone (MRevNet): Its backbone.
        forward_loss (Callable[[], Tensor]): One training forward on the
            batch planned for; returns the summed loss.
        budget_bytes (int): The largest whole step peak allowed.
        optimizer (torch.optim.Optimizer, optional): Its state is part of
            the peak.
        verify (bool): Run one more step with the chosen plan and record
            its measured peak. Defaults to True.
        context (Callable): The training forward's context (autocast),
            for the block timings. Defaults to no context.

    Returns:
        tuple[PlanChoice, PlanFigures]: The plan, now applied to
        ``backbone`` and the heads (:func:`apply_plan`), and the figures
        it was chosen from.

    Raises:
        MemoryBudgetError: Nothing fits. On this or any other error the
            backbone and the heads keep the plan they had.
    """
    device = next(model.parameters()).device
    before = (backbone.stored_blocks, backbone.store_stem)
    heads_before = _heads_stored(model)
    pending = backbone.plan_pending
    try:
        with _TrainingStateRestored(model, device):
            figures = measure_plan_figures(
                model, backbone, forward_loss, device, optimizer, context
            )
            choice = choose_plan(figures, budget_bytes)
            apply_plan(model, backbone, choice.plan)
            if verify:

                def run_step():
                    forward_loss().backward()

                measured = _out_of_memory_as_inf(
                    lambda: step_peak(
                        model, run_step, device, optimizer_state(optimizer)
                    )
                )
                choice = dataclasses.replace(
                    choice,
                    measured_peak_bytes=measured
                    + figures.optimizer_state_bytes,
                )
    except BaseException:
        backbone.set_plan(*before)
        _store_heads(model, heads_before)
        backbone.plan_pending = pending
        raise
    return choice, figures


def _memory_budget_backbone(model: nn.Module):
    backbone = getattr(model, 'backbone', model)
    if getattr(backbone, 'memory_budget', None) is None:
        return None
    return backbone


@HOOKS.register_module()
class MRevNetMemoryBudgetHook(Hook):
    """Choose the backbone's memory plan for its ``memory_budget``.

    Before the first training iteration of a run it plans with that
    iteration's batch (see the module docstring), logs the budget, the
    plan, its predicted and measured whole step peak, the predicted
    recomputation time and how to set the plan without planning, then
    applies it. The plan is saved in the checkpoints' ``meta``
    (``memory_plan``); a resumed run applies it again instead of
    planning anew, so that it computes what the interrupted run would
    have. Models whose backbone has no ``memory_budget`` are left alone.
    ``MRevNetRunner`` registers it.
    """

    priority = 'VERY_HIGH'

    def __init__(self):
        self._planned = False
        self._saved_plan = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        meta = checkpoint.get('meta')
        if isinstance(meta, dict):
            self._saved_plan = meta.get('memory_plan')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        model = _unwrap(runner.model)
        backbone = _memory_budget_backbone(model)
        if backbone is not None and not backbone.plan_pending:
            plan = _plan_of(model, backbone).as_dict()
            checkpoint.setdefault('meta', {})['memory_plan'] = plan

    def before_train_iter(self, runner, batch_idx: int, data_batch=None):
        if self._planned:
            return
        self._planned = True
        model = _unwrap(runner.model)
        backbone = _memory_budget_backbone(model)
        if backbone is None:
            return
        if runner.iter > 0 and self._saved_plan is not None:
            plan = self._saved_plan
            try:
                # A plan saved before the heads were planned leaves them
                # as the model is built.
                store_heads = plan.get('store_heads', _heads_stored(model))
                if not (store_heads is None or isinstance(store_heads, bool)):
                    raise ValueError(f'store_heads={store_heads!r}')
                apply_plan(
                    model,
                    backbone,
                    MemoryPlan(
                        plan['stored_blocks'], plan['store_stem'], store_heads
                    ),
                )
            except (AttributeError, KeyError, TypeError, ValueError) as error:
                raise ValueError(
                    "the resumed checkpoint's meta['memory_plan'] "
                    f'{plan!r} is not a plan of this model (a dict of '
                    'stored_blocks, one int per stage, store_stem, a '
                    'bool, and for an MRevNetEncoderDecoder whose heads '
                    f'recompute, store_heads, a bool): {error}'
                ) from None
            print_log(
                f'memory plan of the resumed checkpoint: '
                f'{_describe(_plan_of(model, backbone))}',
                logger='current',
            )
            return
        self._plan(runner, model, backbone, data_batch)

    def _plan(self, runner, model, backbone, data_batch) -> None:
        from mmengine.dist import all_gather_object, get_rank

        device = next(model.parameters()).device
        wrapper = runner.optim_wrapper
        optimizer = getattr(wrapper, 'optimizer', None)
        held = storage_bytes(
            itertools.chain(
                model.parameters(),
                model.buffers(),
                optimizer_state(optimizer),
            )
        )
        total, available = device_memory(device, held)
        budget = backbone.memory_budget.resolve(total, available)

        def context():
            return wrapper.optim_context(model)

        start = time.perf_counter()
        # The data preprocessor may draw random numbers (batch
        # augmentations): the real step draws them again.
        with _TrainingStateRestored(model, device):
            data = model.data_preprocessor(data_batch, True)

            def forward_loss():
                with context():
                    losses = model(**data, mode='loss')
                    loss, _ = model.parse_losses(losses)
                return loss

            try:
                choice, figures = plan_for_memory_budget(
                    model,
                    backbone,
                    forward_loss,
                    budget,
                    optimizer,
                    context=context,
                )
                outcome = choice.plan
            except MemoryBudgetError as error:
                choice, figures, outcome = None, None, str(error)
        seconds = time.perf_counter() - start
        # Every process measured; all use rank 0's plan, and all stop if
        # any could not fit one.
        outcomes = all_gather_object(outcome)
        for rank, result in enumerate(outcomes):
            if isinstance(result, str):
                where = '' if rank == get_rank() else f' (on rank {rank})'
                raise MemoryBudgetError(result + where)
        plan = outcomes[0]
        if plan != choice.plan:
            apply_plan(model, backbone, plan)
            choice = dataclasses.replace(
                choice,
                plan=plan,
                predicted_peak_bytes=figures.predict_peak(plan),
                recompute_seconds=figures.recompute_seconds(plan),
                measured_peak_bytes=None,
            )
            print_log(
                f'memory plan of rank 0 applied: {_describe(plan)}',
                logger='current',
            )
        self._log(backbone, device, total, available, choice, figures, seconds)

    @staticmethod
    def _log(backbone, device, total, available, choice, figures, seconds):
        def mib(value):
            return f'{value / _MIB:.1f} MiB'

        measured = 'not measured'
        if choice.measured_peak_bytes is not None:
            measured = mib(choice.measured_peak_bytes)
        forwards = 2 + sum(len(t) - 1 for t in figures.kept_bytes)
        steps = len(figures.last_stage_peaks) + 1
        timed = ['blocks']
        if figures.stem_seconds:
            timed.insert(0, 'stem')
        if figures.heads_planned:
            steps += len(figures.stored_heads_peaks)
            timed.append('heads')
        lines = [
            f'memory_budget={backbone.memory_budget.text}: '
            f'{mib(choice.budget_bytes)} on {device} (total {mib(total)}, '
            f'available {mib(available)}); planned at input shape '
            f'{figures.shape} in {seconds:.1f} s '
            f'({steps} training steps, '
            f'{forwards} counted forwards, timed forwards of '
            f'{_listed(timed)})',
            f'memory plan: {_describe(choice.plan)}; whole step peak '
            f'predicted {mib(choice.predicted_peak_bytes)}, measured '
            f'{measured} (one step with the plan; both include the '
            f'{mib(figures.optimizer_state_bytes)} of optimizer state its '
            'first step allocates)',
            'recomputation per step: predicted '
            f'{choice.recompute_seconds:.3f} s (everything recomputed: '
            f'{choice.floor_recompute_seconds:.3f} s)',
            'to skip planning, remove memory_budget (from the backbone and '
            'the segmentor) and set in the backbone config: '
            f'stored_blocks={tuple(choice.plan.stored_blocks)!r}, '
            f'store_stem={choice.plan.store_stem!r}'
            + (
                '; and in the segmentor config: memory_saving_heads=None'
                if choice.plan.store_heads
                else ''
            ),
        ]
        for line in lines:
            print_log(line, logger='current')
        if (
            choice.measured_peak_bytes is not None
            and choice.measured_peak_bytes > choice.budget_bytes
        ):
            print_log(
                f'the measured peak {measured} is above the budget '
                f'{mib(choice.budget_bytes)}: the prediction was too low '
                'for this model; lower memory_budget',
                logger='current',
                level=logging.WARNING,
            )


def _listed(words: List[str]) -> str:
    if len(words) < 2:
        return ''.join(words)
    return ', '.join(words[:-1]) + ' and ' + words[-1]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _plan_of(model: nn.Module, backbone: nn.Module) -> MemoryPlan:
    return MemoryPlan(
        tuple(backbone.stored_blocks),
        backbone.store_stem,
        _heads_stored(model),
    )
