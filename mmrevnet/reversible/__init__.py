"""Reversible momentum stages (torch only, no OpenMMLab imports)."""

from .coupling import (
    DEFAULT_MAX_AMPLIFICATION,
    LOW_PRECISION_MAX_AMPLIFICATION,
    amplification,
    forward_step,
    gamma_as_computed,
    inverse_position,
    inverse_velocity,
    state_anchor_interval,
)
from .finite import FiniteRecord, check_finite
from .function import MomentumStageFunction, StageReport
from .sequential import MomentumSequential
from .stage import (
    MODES,
    MomentumStage,
    StageConfig,
    check_gamma,
    stage_mode,
)
from .state import (
    checkpointed_call,
    eager_under_compile,
    frozen_norm_buffers,
)

__all__ = [
    'MomentumSequential',
    'MomentumStage',
    'StageConfig',
    'MODES',
    'stage_mode',
    'MomentumStageFunction',
    'StageReport',
    'FiniteRecord',
    'check_finite',
    'check_gamma',
    'checkpointed_call',
    'eager_under_compile',
    'frozen_norm_buffers',
    'forward_step',
    'gamma_as_computed',
    'inverse_position',
    'inverse_velocity',
    'amplification',
    'state_anchor_interval',
    'DEFAULT_MAX_AMPLIFICATION',
    'LOW_PRECISION_MAX_AMPLIFICATION',
]
