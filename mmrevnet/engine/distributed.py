"""Multi-process training without CUDA (gloo), for MMEngine's Runner.

mmengine 0.10's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
and its ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP,
both of which fail for a CPU model. The Runner skips ``init_dist`` when a
process group already exists and builds the wrapper from
``model_wrapper_cfg``, so on a machine without CUDA we create the gloo
group first and use :class:`MRevNetCPUDistributedDataParallel`.
"""

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

#: What torchrun sets in every process it starts and ``init_process_group``
#: reads (mmseg's tools set ``LOCAL_RANK`` themselves, so it is no sign).
TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
CPU_WRAPPER = 'MRevNetCPUDistributedDataParallel'


@MODEL_WRAPPERS.register_module()
class MRevNetCPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` that accepts a model on the CPU.

    DDP refuses ``device_ids`` for a CPU module; they are dropped there and
    kept for a CUDA module, so the same config runs on both.
    """

    def __init__(self, module, **kwargs):
        first = next(module.parameters(), None)
        if first is not None and first.device.type == 'cpu':
            kwargs.pop('device_ids', None)
            kwargs.pop('output_device', None)
        super().__init__(module=module, **kwargs)


def torchrun_command(script: str = 'tools/train.py') -> str:
    """The command line that starts ``script`` on 2 CPU processes."""
    return (
        f'python -m torch.distributed.run --nproc_per_node=2 {script} '
        f'CONFIG --launcher pytorch'
    )


def init_cpu_process_group(backend: str = 'gloo', timeout=None) -> bool:
    """Create the default process group from torchrun's environment.

    Only when CUDA is unavailable and no group exists yet; returns whether a
    group was created.

    Args:
        backend (str): Must be one that runs on CPUs. Defaults to 'gloo'.
        timeout (float, optional): Seconds, as mmengine's
            ``dist_cfg.timeout``. Defaults to None (torch's default).
    """
    if torch.cuda.is_available() or not dist.is_available():
        return False
    if dist.is_initialized() or 'RANK' not in os.environ:
        return False
    kwargs = {}
    if timeout is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    dist.init_process_group(backend=backend, **kwargs)
    return True


def init_cpu_launcher_env(
    launcher: str, dist_cfg: Optional[dict] = None, script: str = ''
) -> bool:
    """What mmengine's ``init_dist`` does, for processes without CUDA.

    Creates the gloo group from torchrun's environment ('pytorch'
    launcher); whatever ``dist_cfg.backend`` says, gloo is the CPU backend.
    Raises, before any process group or model exists, where mmengine would
    fail in ``torch.cuda.set_device``.

    Args:
        launcher (str): The Runner's launcher ('none' does nothing).
        dist_cfg (dict, optional): ``env_cfg.dist_cfg`` (its ``timeout``
            is kept).
        script (str): The script to name in the error message.

    Returns:
        bool: Whether a process group was created.

    Raises:
        RuntimeError: 'slurm' or 'mpi' (mmengine's init needs CUDA for
            them), or 'pytorch' outside torchrun.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if dist.is_available() and dist.is_initialized():
        return False
    command = torchrun_command(script or 'tools/train.py')
    if launcher != 'pytorch':
        raise RuntimeError(
            f"launcher={launcher!r} needs CUDA (mmengine's init_dist calls "
            f'torch.cuda.set_device); without GPUs start the processes '
            f'with: {command}'
        )
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"launcher='pytorch' needs the environment torchrun sets "
            f'({", ".join(missing)} missing); start it with: {command}'
        )
    timeout = (dist_cfg or {}).get('timeout')
    return init_cpu_process_group('gloo', timeout)


def cpu_model_wrapper_cfg(
    model_wrapper_cfg: Optional[dict], find_unused_parameters: bool = False
) -> Optional[dict]:
    """The ``model_wrapper_cfg`` that wraps a CPU model for gloo.

    None (mmengine's default DDP) becomes the CPU-aware wrapper with
    mmengine's default options; a config naming mmengine's
    ``MMDistributedDataParallel`` (or no type, e.g. only
    ``static_graph=True``) keeps its options under the CPU-aware type.
    Any other wrapper is the config's choice and is returned unchanged.

    Args:
        model_wrapper_cfg (dict, optional): The config's wrapper.
        find_unused_parameters (bool): The config's top-level key, used
            when no wrapper is configured. Defaults to False.
    """
    if model_wrapper_cfg is None:
        return dict(
            type=CPU_WRAPPER,
            broadcast_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )
    if model_wrapper_cfg.get('type', 'MMDistributedDataParallel') == (
        'MMDistributedDataParallel'
    ):
        model_wrapper_cfg['type'] = CPU_WRAPPER
    return model_wrapper_cfg
