from .amp import MRevNetBF16CPUAmpOptimWrapper
from .checkpoint import (
    UntrustedCheckpointError,
    check_checkpoint_objects,
    load_runner_checkpoint,
    runner_checkpoint_globals,
)
from .config import (
    build_test_config,
    build_train_config,
    init_cpu_launcher,
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
    'build_train_config',
    'build_test_config',
    'init_cpu_launcher',
    'MRevNetCPUDistributedDataParallel',
    'init_cpu_process_group',
    'MRevNetBF16CPUAmpOptimWrapper',
]
