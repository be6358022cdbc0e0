"""One momentum stage: its validated settings and the runner that uses them.

:class:`StageConfig` is the single place where a stage's settings live and
are checked; it is frozen, so a setting changes only by building a new,
validated config (:meth:`MomentumStage.configure`). Everything derived from
the settings (the stored-state interval, whether a call reconstructs) is
computed from it, never copied.

A stage runs in one of three modes:

* ``'reversible'``: the backward reconstructs activations from the stage
  end (:class:`~.function.MomentumStageFunction`); the public
  ``memory_saving=True``.
* ``'checkpoint'``: plain autograd with each function checkpointed; the
  public ``memory_saving=False, with_cp=True``.
* ``'plain'``: plain autograd, every activation stored.

In eval mode and under ``torch.no_grad()`` every mode runs plainly.
"""

import dataclasses
import numbers
import warnings
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .coupling import (
    DEFAULT_MAX_AMPLIFICATION,
    LOW_PRECISION_MAX_AMPLIFICATION,
    amplification,
    forward_step,
    state_anchor_interval,
)
from .finite import FORWARD, FiniteRecord, merge_ranges, value_range
from .function import StageReport, momentum_stage_memory_saving
from .state import (
    autocast_active,
    checkpointed_call,
    eager_under_compile,
)

MODES = ('reversible', 'checkpoint', 'plain')
# The reversible Function is a graph break under torch.compile (see
# eager_under_compile); the residual functions inside it run eagerly.
_reversible_call = eager_under_compile(momentum_stage_memory_saving)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def stage_mode(memory_saving: bool, with_cp: bool = False) -> str:
    """The mode meant by the public ``memory_saving`` and ``with_cp``."""
    for name, value in (
        ('memory_saving', memory_saving),
        ('with_cp', with_cp),
    ):
        if not isinstance(value, bool):
            raise TypeError(f'{name} must be a bool, got {value!r}')
    if memory_saving:
        return 'reversible'
    return 'checkpoint' if with_cp else 'plain'


def check_gamma(gamma, memory_saving: bool) -> float:
    """Validate ``gamma`` for the chosen path and return it as a float."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f'gamma must be a real number, got {gamma!r}')
    gamma = float(gamma)
    if memory_saving:
        if not 0.0 < gamma < 1.0:
            hint = (
                ' gamma=0 is a plain ResNet update, which is not '
                'invertible; use memory_saving=False for it.'
                if gamma == 0.0
                else ''
            )
            raise ValueError(
                'gamma must be in (0, 1) when memory_saving=True'
                f', got {gamma}.{hint}'
            )
    elif not 0.0 <= gamma < 1.0:
        raise ValueError(
            f'gamma must be in [0, 1) when memory_saving=False, got {gamma}'
        )
    return gamma


def _check_flag(name: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f'{name} must be a bool, got {value!r}')


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """The validated, immutable settings of one momentum stage.

    Args:
        num_functions (int): Number of momentum updates of the stage.
        gamma (float): Momentum ``gamma = 1 - mu``; in (0, 1) for the
            ``'reversible'`` mode, [0, 1) otherwise. Defaults to 0.9.
        mode (str): ``'reversible'``, ``'checkpoint'`` or ``'plain'`` (see
            the module docstring). Defaults to ``'reversible'``.
        name (str): Name used in warnings and errors. Defaults to 'stage'.
        max_amplification (float): Largest rounding-error growth accepted
            between two stored states (see :mod:`.coupling`).
            Defaults to 12.
        preserve_rng_state (bool): Replay random numbers in the
            recomputation. Defaults to True.
        track_drift (bool): Keep the true stage input, measure in every
            backward how far its reconstruction drifted, and check the
            reconstruction for non-finite values (two stored tensors and
            four host synchronisations per stage and backward: a debugging
            aid, off on the training hot path). With it, a non-finite value
            raises at once, in the pass that met it. Defaults to False.
        check_finite (bool): In memory-saving training, record on the
            device where values stop being finite, in forward and in the
            reconstruction (one reduction per function and pass, no host
            synchronisation; read by :func:`~.finite.check_finite`, which
            mmrevnet's runner calls after every iteration). Defaults to
            True.
        stored_blocks (int): In the ``'reversible'`` mode, how many
            functions, from the start of the stage, keep their activations
            (plain autograd, no recomputation); the rest are reversed. The
            plan of a memory budget: from 0 (all reversed, the least
            memory) to ``num_functions`` (nothing recomputed). Ignored by
            the other modes, which keep (or checkpoint) every function.
            Defaults to 0.
    """

    num_functions: int
    gamma: float = 0.9
    mode: str = 'reversible'
    name: str = 'stage'
    max_amplification: float = DEFAULT_MAX_AMPLIFICATION
    preserve_rng_state: bool = True
    track_drift: bool = False
    check_finite: bool = True
    stored_blocks: int = 0
    #: Blocks between stored states in fp32/fp64 (0: none). Derived.
    anchor_interval: int = dataclasses.field(init=False)
    #: The same under 16-bit autocast. Derived.
    low_precision_anchor_interval: int = dataclasses.field(init=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if (
            isinstance(self.num_functions, bool)
            or not isinstance(self.num_functions, numbers.Integral)
            or self.num_functions < 0
        ):
            raise ValueError(
                'num_functions must be an int >= 0, got '
                f'{self.num_functions!r}'
            )
        if not isinstance(self.name, str):
            raise TypeError(f'name must be a str, got {self.name!r}')
        bound = self.max_amplification
        if (
            isinstance(bound, bool)
            or not isinstance(bound, numbers.Real)
            or not bound > 1.0
        ):
            raise ValueError(
                f'max_amplification must be a number > 1, got {bound!r}'
            )
        _check_flag('preserve_rng_state', self.preserve_rng_state)
        _check_flag('track_drift', self.track_drift)
        _check_flag('check_finite', self.check_finite)
        kept = self.stored_blocks
        if (
            isinstance(kept, bool)
            or not isinstance(kept, numbers.Integral)
            or not 0 <= kept <= self.num_functions
        ):
            raise ValueError(
                f'stored_blocks must be an int in [0, {self.num_functions}] '
                f'(the functions of stage {self.name!r}), got {kept!r}'
            )
        gamma = check_gamma(self.gamma, self.memory_saving)
        derived = dict(
            gamma=gamma,
            num_functions=int(self.num_functions),
            stored_blocks=int(kept),
            max_amplification=float(bound),
            anchor_interval=0,
            low_precision_anchor_interval=0,
        )
        if self.memory_saving:
            derived['anchor_interval'] = self._plan_stored_states(
                gamma, float(bound)
            )
            derived['low_precision_anchor_interval'] = self._interval(
                gamma, min(float(bound), LOW_PRECISION_MAX_AMPLIFICATION)
            )
        for key, value in derived.items():
            object.__setattr__(self, key, value)

    @property
    def memory_saving(self) -> bool:
        """Whether training takes the reconstructing backward."""
        return self.mode == 'reversible'

    @property
    def with_cp(self) -> bool:
        """Whether the plain path checkpoints each function."""
        return self.mode == 'checkpoint'

    @property
    def num_reversed(self) -> int:
        """Functions whose activations the backward reconstructs."""
        if not self.memory_saving:
            return 0
        return self.num_functions - self.stored_blocks

    @property
    def num_stored_states(self) -> int:
        """States ``(x_t, v_t)`` saved inside the reversed part."""
        if not self.anchor_interval or not self.num_reversed:
            return 0
        return (self.num_reversed - 1) // self.anchor_interval

    def anchor_interval_for(self, low_precision: bool) -> int:
        """Blocks between stored states (0: none) for the forward's precision.

        Args:
            low_precision (bool): The functions run under 16-bit autocast.
        """
        if low_precision:
            return self.low_precision_anchor_interval
        return self.anchor_interval

    def replace(self, **changes) -> 'StageConfig':
        """A new, validated config with ``changes`` applied.

        ``memory_saving`` and ``with_cp`` are accepted as well as ``mode``.
        """
        if 'memory_saving' in changes or 'with_cp' in changes:
            if 'mode' in changes:
                raise ValueError(
                    'give either mode or memory_saving/with_cp, not both'
                )
            changes['mode'] = stage_mode(
                changes.pop('memory_saving', self.memory_saving),
                changes.pop('with_cp', self.with_cp),
            )
        fields = {f.name for f in dataclasses.fields(self) if f.init}
        unknown = sorted(set(changes) - fields)
        if unknown:
            raise TypeError(
                f'unknown stage settings {unknown}; allowed: '
                f'{sorted(fields | {"memory_saving", "with_cp"})}'
            )
        return dataclasses.replace(self, **changes)

    def _interval(self, gamma: float, max_amplification: float) -> int:
        steps = self.num_functions - self.stored_blocks
        if amplification(gamma, steps) <= max_amplification:
            return 0
        return state_anchor_interval(gamma, max_amplification)

    def _plan_stored_states(self, gamma: float, bound: float) -> int:
        # Only the reversed functions divide by gamma.
        steps = int(self.num_functions - self.stored_blocks)
        growth = amplification(gamma, steps)
        if growth <= bound:
            return 0
        interval = state_anchor_interval(gamma, bound)
        stored = (steps - 1) // interval
        if stored > steps // 2:
            smallest = bound ** (-1.0 / 2)
            raise ValueError(
                f'gamma={gamma} is too small for the memory-saving '
                f'stage {self.name!r} of {steps} momentum blocks: inverting '
                f'a block divides the velocity by gamma, so rounding errors '
                f'grow by (1/gamma)**{steps} = {growth:.3g}; keeping them '
                f'below {bound:g} would store {stored} of '
                f'{steps} intermediate states. Use gamma >= {smallest:.4g} or '
                'memory_saving=False.'
            )
        warnings.warn(
            f'Momentum stage {self.name!r}: gamma={gamma} over {steps} '
            f'blocks amplifies rounding errors by {growth:.3g}; storing '
            f'{stored} intermediate state(s) (one every {interval} blocks) '
            f'keeps the reconstruction below {bound:g}x, so its memory now '
            'grows with depth.',
            UserWarning,
            stacklevel=5,
        )
        return interval


class MomentumStage:
    """Runs the functions of one momentum stage with its :class:`StageConfig`.

    Holds no modules, so a backbone can keep its blocks under the names a
    ResNet uses (``layer3.5.conv1``) and still run them as one stage.

    Args:
        num_functions (int): Number of momentum updates of the stage.
        gamma (float): Momentum ``gamma = 1 - mu``. Defaults to 0.9.
        memory_saving (bool): Use the reconstructing backward in training.
            Defaults to True.
        with_cp (bool): With ``memory_saving=False``, checkpoint each
            function. Defaults to False.
        **kwargs: Further :class:`StageConfig` settings (``name``,
            ``max_amplification``, ``preserve_rng_state``, ``track_drift``).
    """

    def __init__(
        self,
        num_functions: int,
        gamma: float = 0.9,
        memory_saving: bool = True,
        with_cp: bool = False,
        **kwargs,
    ):
        self._config = StageConfig(
            num_functions,
            gamma=gamma,
            mode=stage_mode(memory_saving, with_cp),
            **kwargs,
        )
        self.report = StageReport()
        self.finite = FiniteRecord(self._config.num_functions)

    @classmethod
    def from_config(cls, config: StageConfig) -> 'MomentumStage':
        """A stage that runs with an already validated ``config``."""
        stage = cls.__new__(cls)
        stage._config = config
        stage.report = StageReport()
        stage.finite = FiniteRecord(config.num_functions)
        return stage

    @property
    def config(self) -> StageConfig:
        """The stage's settings (read-only; see :meth:`configure`)."""
        return self._config

    def configure(self, **changes) -> StageConfig:
        """Change settings through :meth:`StageConfig.replace` (validated).

        Returns:
            StageConfig: The new settings.
        """
        self._config = self._config.replace(**changes)
        if self.finite.num_functions != self._config.num_functions:
            self.finite = FiniteRecord(self._config.num_functions)
        return self._config

    # Read-only views of the config, for callers that read one setting.
    gamma = property(lambda self: self._config.gamma)
    memory_saving = property(lambda self: self._config.memory_saving)
    with_cp = property(lambda self: self._config.with_cp)
    track_drift = property(lambda self: self._config.track_drift)
    name = property(lambda self: self._config.name)
    num_functions = property(lambda self: self._config.num_functions)
    anchor_interval = property(lambda self: self._config.anchor_interval)
    num_stored_states = property(lambda self: self._config.num_stored_states)

    def uses_memory_saving(
        self,
        functions: Sequence[nn.Module],
        x: Tensor,
        v0: Optional[Tensor],
        training: bool,
    ) -> bool:
        """Whether a call would take the reconstructing path."""
        if not (
            self._config.memory_saving
            and training
            and torch.is_grad_enabled()
            and len(functions)
        ):
            return False
        if x.requires_grad or (v0 is not None and v0.requires_grad):
            return True
        return any(p.requires_grad for f in functions for p in f.parameters())

    def __call__(
        self,
        functions: Sequence[nn.Module],
        x: Tensor,
        v0: Optional[Tensor] = None,
        training: bool = True,
    ) -> Tensor:
        """Run the stage; returns ``x_T``."""
        config = self._config
        if len(functions) != config.num_functions:
            raise ValueError(
                f'stage {config.name!r} was planned for '
                f'{config.num_functions} functions, got {len(functions)}'
            )
        if autocast_active(x):
            # The coupling runs in fp32 whatever precision F computes in.
            if x.dtype in _LOW_PRECISION:
                x = x.float()
            if v0 is not None and v0.dtype in _LOW_PRECISION:
                v0 = v0.float()
        if v0 is not None and v0.shape != x.shape:
            raise ValueError(
                f'v0 must have the shape of x {tuple(x.shape)}, '
                f'got {tuple(v0.shape)}'
            )
        if self.uses_memory_saving(functions, x, v0, training):
            kept = config.stored_blocks
            finite = (
                self.finite
                if config.check_finite or config.track_drift
                else None
            )
            if kept:
                # The kept functions run under plain autograd; the reversed
                # rest starts from their state, its velocity an input.
                x, v0 = self._plain(
                    functions[:kept], x, v0, keep_v=True, finite=finite
                )
            if kept == len(functions):
                return x
            report = self.report if config.track_drift else None
            return _reversible_call(
                config, functions[kept:], x, v0, report, finite
            )
        return self._plain(functions, x, v0)

    def _plain(
        self,
        functions,
        x,
        v0,
        keep_v: bool = False,
        finite: Optional[FiniteRecord] = None,
    ):
        gamma = self._config.gamma
        v = torch.zeros_like(x) if v0 is None else v0
        checkpoint = (
            self._config.with_cp
            and torch.is_grad_enabled()
            and x.requires_grad
        )
        ranges = []
        if finite is not None:
            ranges.append(merge_ranges(value_range(x), value_range(v)))
        for function in functions:
            fx = checkpointed_call(function, x) if checkpoint else function(x)
            x, v = forward_step(x, v, fx, gamma)
            if finite is not None:
                ranges.append(value_range(v))
        if finite is not None:
            ranges[-1] = merge_ranges(ranges[-1], value_range(x))
            finite.add(FORWARD, 0, ranges)
            if self._config.track_drift:
                finite.raise_if_nonfinite(self._config.name, FORWARD)
        return (x, v) if keep_v else x
