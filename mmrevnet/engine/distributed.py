"""Multi-process training without CUDA (gloo), for MMEngine's Runner.

mmengine 0.10's ``init_dist('pytorch')`` calls ``torch.cuda.set_device``
and its ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP,
both of which fail for a CPU model. The Runner skips ``init_dist`` when a
process group already exists and builds the wrapper from
``model_wrapper_cfg``, so on a machine without CUDA we create the gloo
group first and use :class:`MRevNetCPUDistributedDataParallel`.
"""

import os

import torch
import torch.distributed as dist
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


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


def init_cpu_process_group(backend: str = 'gloo') -> bool:
    """Create the default process group from torchrun's environment.

    Only when CUDA is unavailable and no group exists yet; returns whether a
    group was created.
    """
    if torch.cuda.is_available() or not dist.is_available():
        return False
    if dist.is_initialized() or 'RANK' not in os.environ:
        return False
    dist.init_process_group(backend=backend)
    return True
