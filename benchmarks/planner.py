"""Memory plans for a budget: which blocks of an m-RevNet keep activations.

A memory-saving :class:`~mmrevnet.models.backbones.MRevNet` recomputes every
block in the backward by default (the *floor*: least memory, most
recomputation). Its plan, ``stored_blocks=(k1, .., k4)`` and
``store_stem``, keeps the activations of the first ``k_i`` blocks of stage
``i`` (block 0, the transition block, is checkpointed otherwise; the others
are reversed) and of the stem. :func:`plan_for_budget` picks, for a model,
an input shape and a budget of step peak memory, the plan with the least
estimated recomputation time whose predicted step peak fits.

The estimate is built from figures measured once at that shape
(:func:`measure_figures`), all with :mod:`benchmarks.memory`, the
project's one measurement implementation:

* ``P0``, the step peak of the floor plan (:func:`~.memory.step_peak`);
* per stage and per count ``k``, the bytes that keeping the first ``k``
  blocks adds to what the step saves for backward
  (:class:`~.memory.SavedTensorCounter`, as differences from the floor;
  one counted forward per block of the network), and the same for the
  stem. Stages add up (each stage's kept tensors are its own);
* per block, the time of one forward (median of a few runs under
  ``torch.no_grad`` on a copy of the block, at its input shape in this
  step): recomputation in the backward runs that forward once more, so a
  kept block saves about that much.

* the step peaks of the plans that keep ``k`` blocks of the last stage and
  nothing else, ``k = 1 .. n`` (3 more steps for a ResNet-101 layout).

Predicted step peak of a plan = the measured peak of its last-stage count
+ the saved bytes of its other kept blocks. The floor's peak lies in the
backward of the last stage, which runs first, while the kept activations of
every earlier stage (and the stem) are alive; keeping a block never adds
more than its saved activations to any moment of the step, so this is an
upper bound, exact while the peak stays in the last stage's backward. Once
the earlier stages keep most of their blocks the peak moves (to their own
backward, or to the end of the forward) and the prediction over-estimates;
the measured accuracy is in ``docs/benchmark/frontier/``. (``P0`` + all
kept bytes, the simpler model, over-estimates by up to 17% on
backbone-101-D8 once the last stage is mostly kept: its kept blocks are
freed before its own recomputation peaks.)

Plans are enumerated exhaustively (every per-stage prefix count and the
stem; 3840 plans for depth 101, 10656 for 152), so the choice is exact for
the model, with no binning.
"""

import copy
import dataclasses
import itertools
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mmrevnet.engine.memory_budget import MemoryPlan

from .memory import SavedTensorCounter, step_peak

__all__ = [
    'Plan',
    'StageFigures',
    'PlannerFigures',
    'PlanResult',
    'BudgetError',
    'synthetic_step',
    'measure_figures',
    'plan_for_budget',
    'ConfigPlanner',
]

_MIB = float(2**20)


class Plan(MemoryPlan):
    """:class:`~mmrevnet.engine.memory_budget.MemoryPlan` (the backbone
    arguments ``stored_blocks, store_stem``) with its ``--cfg-options``
    forms; ``stored_blocks=None`` builds the floor."""

    def cfg_options(self, prefix: str = 'model.backbone') -> str:
        """The plan as ``--cfg-options`` arguments (space separated).

        mmengine's ``DictAction`` reads ``(1,2,0,0)`` as a tuple and
        ``False`` as a bool, so the string round-trips.
        """
        blocks = ','.join(str(k) for k in self.stored_blocks)
        dot = f'{prefix}.' if prefix else ''
        return (
            f'{dot}stored_blocks=({blocks}) {dot}store_stem={self.store_stem}'
        )

    def cfg_dict(self, prefix: str = 'model.backbone') -> dict:
        """The plan as a dict for ``Config.merge_from_dict``."""
        dot = f'{prefix}.' if prefix else ''
        return {
            f'{dot}stored_blocks': tuple(self.stored_blocks),
            f'{dot}store_stem': self.store_stem,
        }

    def __str__(self) -> str:
        stem = ', stem' if self.store_stem else ''
        return f'stored_blocks={tuple(self.stored_blocks)}{stem}'


@dataclasses.dataclass(frozen=True)
class StageFigures:
    """Measured figures of one stage.

    Attributes:
        num_blocks (int): Blocks of the stage (transition included).
        kept_bytes_table (tuple[int]): For ``k = 0 .. num_blocks``, the
            saved bytes that keeping the first ``k`` blocks adds to the
            floor's (entry 0 is 0). Measured for every ``k``: the increments
            are not all equal (keeping the whole stage also keeps tensors
            that the reversed tail would not).
        transition_seconds (float): One forward of block 0.
        momentum_seconds (float): One forward of a momentum block.
    """

    num_blocks: int
    kept_bytes_table: Tuple[int, ...]
    transition_seconds: float
    momentum_seconds: float

    def kept_bytes(self, kept: int) -> int:
        return self.kept_bytes_table[kept]

    def recompute_seconds(self, kept: int) -> float:
        seconds = self.momentum_seconds * (self.num_blocks - max(kept, 1))
        return seconds + (self.transition_seconds if kept == 0 else 0.0)


@dataclasses.dataclass(frozen=True)
class PlannerFigures:
    """What the planner knows about a model at one input shape.

    Attributes:
        floor_peak_bytes (int): Step peak of the floor plan (P0).
        floor_saved_bytes (int): Bytes the floor plan saves for backward.
        stages (tuple[StageFigures]): One per stage.
        stem_bytes (int): Saved bytes added by keeping the stem.
        stem_seconds (float): One forward of the stem.
        shape (tuple[int]): The input shape ``(N, C, H, W)``.
        last_stage_peaks (tuple[int]): Step peaks of the plans that keep
            ``k = 0 .. n`` blocks of the last stage and nothing else
            (entry 0 is ``P0``); empty: use ``P0 + kept bytes`` alone.
    """

    floor_peak_bytes: int
    floor_saved_bytes: int
    stages: Tuple[StageFigures, ...]
    stem_bytes: int
    stem_seconds: float
    shape: Tuple[int, ...]
    last_stage_peaks: Tuple[int, ...] = ()

    def kept_bytes(self, plan: Plan) -> int:
        """Saved bytes the plan keeps beyond the floor."""
        total = self.stem_bytes if plan.store_stem else 0
        for stage, kept in zip(self.stages, plan.stored_blocks):
            total += stage.kept_bytes(kept)
        return total

    def predict_peak(self, plan: Plan) -> int:
        """Predicted step peak of a plan.

        The measured peak of the plan's last-stage count alone, plus the
        saved bytes its other kept blocks (earlier stages, stem) add: the
        backward runs the last stage first, while everything kept in the
        earlier stages is still alive. Without ``last_stage_peaks``:
        ``P0`` + all kept bytes.
        """
        if not self.last_stage_peaks:
            return self.floor_peak_bytes + self.kept_bytes(plan)
        last = plan.stored_blocks[-1]
        rest = Plan(plan.stored_blocks[:-1] + (0,), plan.store_stem)
        return self.last_stage_peaks[last] + self.kept_bytes(rest)

    def predict_saved(self, plan: Plan) -> int:
        """Predicted bytes saved for backward."""
        return self.floor_saved_bytes + self.kept_bytes(plan)

    def predict_recompute_seconds(self, plan: Plan) -> float:
        """Estimated recomputation time of one step (forwards rerun)."""
        total = 0.0 if plan.store_stem else self.stem_seconds
        for stage, kept in zip(self.stages, plan.stored_blocks):
            total += stage.recompute_seconds(kept)
        return total

    def plans(self) -> List[Plan]:
        """Every plan: per-stage prefix counts, stem kept or not."""
        counts = [range(s.num_blocks + 1) for s in self.stages]
        return [
            Plan(tuple(blocks), stem)
            for blocks in itertools.product(*counts)
            for stem in (False, True)
        ]

    def all_kept(self) -> Plan:
        return Plan(tuple(s.num_blocks for s in self.stages), True)

    def floor(self) -> Plan:
        return Plan(tuple(0 for _ in self.stages), False)


@dataclasses.dataclass(frozen=True)
class PlanResult:
    """The plan chosen for a budget, with its predictions."""

    plan: Plan
    budget_bytes: int
    predicted_peak_bytes: int
    predicted_saved_bytes: int
    recompute_seconds: float
    floor_recompute_seconds: float
    figures: PlannerFigures

    @property
    def predicted_peak_mib(self) -> float:
        return self.predicted_peak_bytes / _MIB

    def summary(self, prefix: str = 'model.backbone') -> str:
        f = self.figures
        floor_mib = f.floor_peak_bytes / _MIB
        saved_mib = self.predicted_saved_bytes / _MIB
        return '\n'.join(
            [
                f'input shape {tuple(f.shape)}; budget '
                f'{self.budget_bytes / _MIB:.1f} MiB of step peak',
                f'floor (all recomputed) step peak {floor_mib:.1f}'
                f' MiB, all kept (predicted) '
                f'{f.predict_peak(f.all_kept()) / _MIB:.1f} MiB',
                f'plan: {self.plan}',
                f'predicted step peak {self.predicted_peak_mib:.1f} MiB, '
                f'saved activations {saved_mib:.1f} MiB',
                f'predicted recomputation {self.recompute_seconds:.3f} s per '
                f'step (floor: {self.floor_recompute_seconds:.3f} s; block '
                'forwards timed on this machine)',
                f'--cfg-options {self.plan.cfg_options(prefix)}',
            ]
        )


class BudgetError(ValueError):
    """No plan's predicted step peak fits the budget."""


def plan_for_budget(figures: PlannerFigures, budget_bytes: int) -> PlanResult:
    """The plan of least recomputation whose predicted peak fits.

    Ties (same recomputation) go to the smaller peak. Raises
    :class:`BudgetError`, naming the floor, if no plan fits.
    """
    best = least = None
    for plan in figures.plans():
        peak = figures.predict_peak(plan)
        if least is None or peak < least[0]:
            least = (peak, plan)
        if peak > budget_bytes:
            continue
        key = (figures.predict_recompute_seconds(plan), peak)
        if best is None or key < best[0]:
            best = (key, plan)
    if best is None:
        # Usually the floor itself; on tiny models keeping the last stage
        # can be lower (no recomputation transient), so name both.
        raise BudgetError(
            f'budget {budget_bytes / _MIB:.1f} MiB is below the floor: the '
            'plan that recomputes everything needs a step peak of '
            f'{figures.floor_peak_bytes / _MIB:.1f} MiB at input shape '
            f'{tuple(figures.shape)}, and no plan is predicted below '
            f'{least[0] / _MIB:.1f} MiB ({least[1]})'
        )
    (seconds, peak), plan = best
    return PlanResult(
        plan=plan,
        budget_bytes=int(budget_bytes),
        predicted_peak_bytes=peak,
        predicted_saved_bytes=figures.predict_saved(plan),
        recompute_seconds=seconds,
        floor_recompute_seconds=figures.predict_recompute_seconds(
            figures.floor()
        ),
        figures=figures,
    )


def synthetic_step(
    model: nn.Module,
    shape: Sequence[int],
    num_classes: int = 19,
    seed: int = 0,
) -> Callable[[], Tensor]:
    """A closure running one training forward on random data; returns the loss.

    A segmentor (a model with ``loss``) gets random labels and its own
    losses; a backbone is trained on the mean of each output.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    inputs = torch.randn(*shape, generator=generator).to(device)
    if not hasattr(model, 'loss'):
        return lambda: sum(out.float().mean() for out in model(inputs))
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    size = tuple(shape[2:])
    samples = []
    for _ in range(shape[0]):
        sample = SegDataSample(metainfo=dict(img_shape=size, ori_shape=size))
        labels = torch.randint(0, num_classes, (1, *size), generator=generator)
        sample.gt_sem_seg = PixelData(data=labels.to(device))
        samples.append(sample)

    def step():
        losses = model.loss(inputs, samples)
        return sum(v for k, v in losses.items() if 'loss' in k)

    return step


def _saved(model: nn.Module, step: Callable[[], Tensor]) -> int:
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        loss = step()
    del loss
    return counter.bytes


def _forward_seconds(module: nn.Module, x: Tensor, repeats: int) -> float:
    # A copy: the timed forwards must not move the model's BN statistics.
    module = copy.deepcopy(module).train()
    times = []
    with torch.no_grad():
        module(x)
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _backbone(model: nn.Module) -> nn.Module:
    return getattr(model, 'backbone', model)


def _block_seconds(backbone: nn.Module, x: Tensor, repeats: int):
    """Forward times of the stem and of blocks 0 and 1 of every stage."""
    inputs: Dict[str, Tensor] = {}
    hooks = []
    layers = [getattr(backbone, name) for name in backbone.res_layers]
    for index, layer in enumerate(layers):
        for block in (0, 1)[: len(layer)]:

            def grab(module, args, key=(index, block)):
                inputs.setdefault(key, args[0].detach())

            hooks.append(layer[block].register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            backbone(x)
    finally:
        for hook in hooks:
            hook.remove()
    stem = _forward_seconds(_Stem(backbone), x, repeats)
    stages = []
    for index, layer in enumerate(layers):
        pair = [_forward_seconds(layer[0], inputs[(index, 0)], repeats)]
        pair.append(
            _forward_seconds(layer[1], inputs[(index, 1)], repeats)
            if len(layer) > 1
            else 0.0
        )
        stages.append(tuple(pair))
    return stem, stages


class _Stem(nn.Module):
    """The backbone's stem as a module (for timing)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone._forward_stem(x)


def measure_figures(
    build: Callable[[Plan], nn.Module],
    shape: Sequence[int],
    make_step: Optional[Callable[[nn.Module], Callable[[], Tensor]]] = None,
    repeats: int = 3,
    log: Optional[Callable[[str], None]] = None,
) -> PlannerFigures:
    """Measure the planner's figures of a model at one input shape.

    Args:
        build (Callable[[Plan], nn.Module]): Builds the model (backbone or
            segmentor with an ``MRevNet`` backbone, ``memory_saving=True``)
            with a plan, in train mode, on its device.
        shape (Sequence[int]): Input ``(N, C, H, W)``.
        make_step (Callable, optional): ``make_step(model)`` returns the
            closure of one training forward. Defaults to
            :func:`synthetic_step` at ``shape``.
        repeats (int): Timed forwards per block (median). Defaults to 3.
        log (Callable, optional): Progress printer.

    Returns:
        PlannerFigures: From one counted forward per block (plus the
        floor and the stem), one step peak (the floor) and the block
        timings.
    """
    shape = tuple(int(s) for s in shape)
    if make_step is None:

        def make_step(model):
            return synthetic_step(model, shape)

    def saved(plan: Plan) -> int:
        torch.manual_seed(0)
        model = build(plan)
        return _saved(model, make_step(model))

    # stored_blocks=None is the floor; the built model tells the stages.
    torch.manual_seed(0)
    model = build(Plan(None, False))
    backbone = _backbone(model)
    sizes = tuple(len(getattr(backbone, n)) for n in backbone.res_layers)
    floor = Plan(tuple(0 for _ in sizes), False)
    step = make_step(model)
    floor_saved = _saved(model, step)
    floor_peak = step_peak(model, step).peak_bytes
    model.zero_grad(set_to_none=True)
    if log:
        log(
            f'floor: saved {floor_saved / _MIB:.1f} MiB, step peak '
            f'{floor_peak / _MIB:.1f} MiB'
        )
    device = next(model.parameters()).device
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    stem_seconds, seconds = _block_seconds(
        _backbone(model), x.to(device), repeats
    )
    del model, step
    stem_bytes = saved(Plan(floor.stored_blocks, True)) - floor_saved
    stages = []
    for index, size in enumerate(sizes):
        table = [0]
        for kept in range(1, size + 1):
            counts = list(floor.stored_blocks)
            counts[index] = kept
            table.append(saved(Plan(tuple(counts))) - floor_saved)
        stages.append(
            StageFigures(
                num_blocks=size,
                kept_bytes_table=tuple(table),
                transition_seconds=seconds[index][0],
                momentum_seconds=seconds[index][1],
            )
        )
        if log:
            log(
                f'stage {index + 1}: saved MiB kept by 0..{size} blocks '
                f'{[round(b / _MIB, 2) for b in table]}, forward of '
                f'block 0 {seconds[index][0] * 1e3:.1f} ms, of a momentum '
                f'block {seconds[index][1] * 1e3:.1f} ms'
            )
    last_peaks = [floor_peak]
    for kept in range(1, sizes[-1] + 1):
        torch.manual_seed(0)
        model = build(Plan(floor.stored_blocks[:-1] + (kept,)))
        last_peaks.append(step_peak(model, make_step(model)).peak_bytes)
        del model
    if log:
        log(
            'step peaks keeping 0..n blocks of the last stage (MiB): '
            f'{[round(b / _MIB, 1) for b in last_peaks]}'
        )
    return PlannerFigures(
        floor_peak_bytes=floor_peak,
        floor_saved_bytes=floor_saved,
        stages=tuple(stages),
        stem_bytes=stem_bytes,
        stem_seconds=stem_seconds,
        shape=shape,
        last_stage_peaks=tuple(last_peaks),
    )


class ConfigPlanner:
    """Builds models from an mmseg config (or a backbone config) with plans.

    Args:
        config (str | Config | dict): A config file or object whose
            ``model`` is a segmentor with an ``MRevNet`` backbone (the
            whole segmentor is measured), or whose ``model`` (or itself)
            is an ``MRevNet`` backbone dict. Another model with a
            ``backbone`` (a classifier) plans on its backbone alone.
        device (str): Defaults to 'cpu'.
    """

    def __init__(self, config: Union[str, dict], device: str = 'cpu'):
        from mmengine.config import Config

        if isinstance(config, str):
            config = Config.fromfile(config)
        cfg = config if isinstance(config, dict) else config.to_dict()
        if not isinstance(cfg, dict):
            cfg = dict(cfg)
        model = copy.deepcopy(cfg.get('model', cfg))
        model = model.to_dict() if hasattr(model, 'to_dict') else model
        self.device = device
        self.num_classes = 19
        if 'backbone' in model and model.get('decode_head'):
            self.prefix = 'model.backbone'
            model['pretrained'] = None
            model.pop('data_preprocessor', None)
            self.num_classes = model['decode_head'].get('num_classes', 19)
            self._segmentor = model
            self._backbone = model['backbone']
        elif 'backbone' in model:
            self.prefix = 'model.backbone'
            self._segmentor, self._backbone = None, model['backbone']
        else:
            self.prefix = 'model.backbone' if 'model' in cfg else ''
            self._segmentor, self._backbone = None, model
        if not self._backbone.get('memory_saving', True):
            raise ValueError('plans need a backbone with memory_saving=True')
        self._backbone.pop('init_cfg', None)
        self._backbone['pretrained'] = None

    def build(self, plan: Plan) -> nn.Module:
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        from tools.cli.config import sync_bn_to_bn

        init_default_scope('mmseg')
        backbone = dict(copy.deepcopy(self._backbone))
        backbone.update(
            stored_blocks=plan.stored_blocks, store_stem=plan.store_stem
        )
        if self._segmentor is None:
            cfg = backbone
        else:
            cfg = copy.deepcopy(self._segmentor)
            cfg['backbone'] = backbone
        sync_bn_to_bn(cfg)
        model = MODELS.build(cfg).to(self.device)
        return model.train()

    def make_step(self, model: nn.Module, shape: Sequence[int]):
        return synthetic_step(model, shape, self.num_classes)

    def measure(self, shape: Sequence[int], repeats: int = 3, log=None):
        return measure_figures(
            self.build,
            shape,
            lambda model: self.make_step(model, shape),
            repeats=repeats,
            log=log,
        )
