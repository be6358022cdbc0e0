from .amp import BF16CPUAmpOptimWrapper
from .checkpoint import (
    UntrustedCheckpointError,
    load_runner_checkpoint,
    runner_checkpoint_globals,
)
from .config import build_test_config, build_train_config
from .distributed import (
    CPUAwareDistributedDataParallel,
    init_cpu_process_group,
)
from .hooks import (
    CheckInvalidLossHook,
    ReconstructionDriftHook,
    momentum_stages,
)
from .runner import MRevNetRunner

__all__ = [
    'MRevNetRunner',
    'UntrustedCheckpointError',
    'load_runner_checkpoint',
    'runner_checkpoint_globals',
    'ReconstructionDriftHook',
    'CheckInvalidLossHook',
    'momentum_stages',
    'build_train_config',
    'build_test_config',
    'CPUAwareDistributedDataParallel',
    'init_cpu_process_group',
    'BF16CPUAmpOptimWrapper',
]
