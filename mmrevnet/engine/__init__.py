from .amp import MRevNetBF16CPUAmpOptimWrapper
from .checkpoint import (
    UntrustedCheckpointError,
    check_checkpoint_objects,
    load_runner_checkpoint,
    runner_checkpoint_globals,
)
from .distributed import (
    MRevNetCPUDistributedDataParallel,
    init_cpu_process_group,
)
from .hooks import (
    MRevNetCheckInvalidLossHook,
    MRevNetDriftHook,
    MRevNetNonFiniteHook,
    momentum_stages,
)
from .memory_budget import MemoryBudgetError, MRevNetMemoryBudgetHook
from .plain_state import MRevNetPlainCheckpointHook
from .runner import MRevNetRunner

__all__ = [
    'MRevNetRunner',
    'MRevNetPlainCheckpointHook',
    'UntrustedCheckpointError',
    'check_checkpoint_objects',
    'load_runner_checkpoint',
    'runner_checkpoint_globals',
    'MRevNetDriftHook',
    'MRevNetNonFiniteHook',
    'MRevNetCheckInvalidLossHook',
    'momentum_stages',
    'MRevNetCPUDistributedDataParallel',
    'init_cpu_process_group',
    'MRevNetBF16CPUAmpOptimWrapper',
    'MRevNetMemoryBudgetHook',
    'MemoryBudgetError',
]
