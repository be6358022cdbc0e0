"""Momentum stages: the settings object and the public module."""

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
from .function import StageReport, momentum_stage_memory_saving
from .state import autocast_active, checkpointed_call

_LOW_PRECISION = (torch.float16, torch.bfloat16)


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


class MomentumStage:
    """Settings and runner of one momentum stage.

    Holds no modules, so a backbone can keep its blocks under the names a
    ResNet uses (``layer3.5.conv1``) and still run them as one stage.

    Args:
        num_functions (int): Number of momentum updates of the stage.
        gamma (float): Momentum ``gamma = 1 - mu``. Defaults to 0.9.
        memory_saving (bool): Use the reconstructing backward in training.
            Defaults to True.
        name (str): Name used in warnings and errors. Defaults to 'stage'.
        max_amplification (float): Largest rounding-error growth accepted
            between two stored states (see :mod:`.coupling`).
            Defaults to 2**8.
        preserve_rng_state (bool): Replay random numbers in the
            recomputation. Defaults to True.
        track_drift (bool): Keep the true stage input and measure, in every
            backward, how far its reconstruction drifted (costs two stored
            tensors and a device sync). Defaults to False.
        with_cp (bool): On the plain path, checkpoint each function.
            Defaults to False.
    """

    def __init__(
        self,
        num_functions: int,
        gamma: float = 0.9,
        memory_saving: bool = True,
        name: str = 'stage',
        max_amplification: float = DEFAULT_MAX_AMPLIFICATION,
        preserve_rng_state: bool = True,
        track_drift: bool = False,
        with_cp: bool = False,
    ):
        self.gamma = check_gamma(gamma, memory_saving)
        self.memory_saving = bool(memory_saving)
        self.num_functions = int(num_functions)
        self.name = name
        if (
            isinstance(max_amplification, bool)
            or not isinstance(max_amplification, numbers.Real)
            or not max_amplification > 1.0
        ):
            raise ValueError(
                'max_amplification must be a number > 1, got '
                f'{max_amplification!r}'
            )
        self.max_amplification = float(max_amplification)
        self.preserve_rng_state = preserve_rng_state
        self.track_drift = track_drift
        self.with_cp = with_cp
        self.report = StageReport()
        self.anchor_interval = 0
        self.low_precision_anchor_interval = 0
        if self.memory_saving:
            self.anchor_interval = self._plan_stored_states()
            self.low_precision_anchor_interval = self._interval(
                min(self.max_amplification, LOW_PRECISION_MAX_AMPLIFICATION)
            )

    def _interval(self, max_amplification: float) -> int:
        if amplification(self.gamma, self.num_functions) <= max_amplification:
            return 0
        return state_anchor_interval(self.gamma, max_amplification)

    def anchor_interval_for(self, low_precision: bool) -> int:
        """Blocks between stored states (0: none) for the forward's precision.

        Args:
            low_precision (bool): The functions run under 16-bit autocast.
        """
        if low_precision:
            return self.low_precision_anchor_interval
        return self.anchor_interval

    @property
    def num_stored_states(self) -> int:
        """States ``(x_t, v_t)`` saved inside the stage besides the end."""
        if not self.anchor_interval:
            return 0
        return (self.num_functions - 1) // self.anchor_interval

    def _plan_stored_states(self) -> int:
        steps = self.num_functions
        growth = amplification(self.gamma, steps)
        if growth <= self.max_amplification:
            return 0
        interval = state_anchor_interval(self.gamma, self.max_amplification)
        stored = (steps - 1) // interval
        if stored > steps // 2:
            smallest = self.max_amplification ** (-1.0 / 2)
            raise ValueError(
                f'gamma={self.gamma} is too small for the memory-saving '
                f'stage {self.name!r} of {steps} momentum blocks: inverting '
                f'a block divides the velocity by gamma, so rounding errors '
                f'grow by (1/gamma)**{steps} = {growth:.3g}; keeping them '
                f'below {self.max_amplification:g} would store {stored} of '
                f'{steps} intermediate states. Use gamma >= {smallest:.4g} or '
                'memory_saving=False.'
            )
        warnings.warn(
            f'Momentum stage {self.name!r}: gamma={self.gamma} over {steps} '
            f'blocks amplifies rounding errors by {growth:.3g}; storing '
            f'{stored} intermediate state(s) (one every {interval} blocks) '
            'keeps '
            f'the reconstruction below {self.max_amplification:g}x, so its '
            'memory now grows with depth.',
            UserWarning,
            stacklevel=3,
        )
        return interval

    def uses_memory_saving(
        self,
        functions: Sequence[nn.Module],
        x: Tensor,
        v0: Optional[Tensor],
        training: bool,
    ) -> bool:
        """Whether a call would take the reconstructing path."""
        if not (
            self.memory_saving
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
        if len(functions) != self.num_functions:
            raise ValueError(
                f'stage {self.name!r} was planned for '
                f'{self.num_functions} functions, got '
                f'{len(functions)}'
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
            return momentum_stage_memory_saving(self, functions, x, v0)
        return self._plain(functions, x, v0)

    def _plain(self, functions, x, v0):
        v = torch.zeros_like(x) if v0 is None else v0
        checkpoint = (
            self.with_cp and torch.is_grad_enabled() and x.requires_grad
        )
        for function in functions:
            fx = checkpointed_call(function, x) if checkpoint else function(x)
            x, v = forward_step(x, v, fx, self.gamma)
        return x


class MomentumSequential(nn.Module):
    """A stack of momentum residual updates with a memory-free backward.

    For each function ``F`` in order::

        v <- gamma * v + (1 - gamma) * F(x);    x <- x + v

    (m-RevNet, Li & Gao, ICCV 2021; Momentum ResNets, Sander et al.,
    ICML 2021). With ``memory_saving=True``, in training with grad enabled,
    the backward reconstructs every ``x_t`` from the stage end instead of
    storing it. In eval mode or under ``torch.no_grad()`` the functions run
    plainly.

    Args:
        functions (Sequence[nn.Module]): The residual functions; ``F(x)``
            must have ``x``'s shape. A module may appear several times
            (shared weights); its gradient is the sum over its uses.
        gamma (float): Momentum ``gamma = 1 - mu``. Defaults to 0.9.
        memory_saving (bool): Use the reconstructing backward.
            Defaults to True.
        **kwargs: Further settings of :class:`MomentumStage` (``name``,
            ``max_amplification``, ``preserve_rng_state``, ``track_drift``,
            ``with_cp``).

    Example:
        >>> stage = MomentumSequential([nn.Linear(4, 4)] * 3, gamma=0.9)
        >>> y = stage(torch.randn(2, 4, requires_grad=True))
    """

    def __init__(
        self,
        functions: Sequence[nn.Module],
        gamma: float = 0.9,
        memory_saving: bool = True,
        **kwargs,
    ):
        super().__init__()
        self.functions = nn.ModuleList(functions)
        self.stage = MomentumStage(
            len(self.functions),
            gamma=gamma,
            memory_saving=memory_saving,
            **kwargs,
        )

    @property
    def gamma(self) -> float:
        return self.stage.gamma

    @property
    def report(self) -> StageReport:
        """Drift measured by the last backward (with ``track_drift``)."""
        return self.stage.report

    def forward(self, x: Tensor, v0: Optional[Tensor] = None) -> Tensor:
        return self.stage(list(self.functions), x, v0, self.training)

    def extra_repr(self) -> str:
        return (
            f'gamma={self.stage.gamma}, '
            f'memory_saving={self.stage.memory_saving}'
        )
