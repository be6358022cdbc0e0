"""What a recomputation must preserve: BN buffers, random numbers, autocast.

The memory-saving backward evaluates each residual function a second time.
That second evaluation must be the *same* function as in the forward pass:

* BatchNorm in train mode normalises with the statistics of the batch it
  sees (the same batch, reconstructed) but must not update the running
  buffers again, otherwise ``running_mean``/``running_var`` move twice per
  step and ``num_batches_tracked`` counts twice (a bug shared by several
  public reversible libraries and by ``torch.utils.checkpoint``).
* Random ops (dropout, drop path) must draw the same numbers, without
  changing the global generator that the plain path would leave behind.
* Autocast is thread-local and off in the backward thread: re-enter the
  state captured in forward.
"""
import contextlib
from typing import Iterable, List, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def frozen_norm_buffers(modules: Iterable[nn.Module]):
    """Run train-mode BatchNorm layers on batch statistics, buffers untouched.

    Setting ``track_running_stats`` to False for the duration makes
    ``_BatchNorm.forward`` (and ``SyncBatchNorm.forward``) normalise with
    batch statistics and skip both the running-stat update and the
    ``num_batches_tracked`` increment. Layers in eval mode are left alone:
    they already use (and never change) their running statistics.

    Args:
        modules (Iterable[nn.Module]): Roots whose submodules are searched.
    """
    changed: List[_BatchNorm] = []
    seen = set()
    for root in modules:
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            if (isinstance(module, _BatchNorm) and module.training
                    and module.track_running_stats):
                module.track_running_stats = False
                changed.append(module)
    try:
        yield
    finally:
        for module in changed:
            module.track_running_stats = True


def _rng_devices(tensor: torch.Tensor) -> List[torch.device]:
    if tensor.device.type == 'cuda':
        return [tensor.device]
    return []


class RNGState:
    """Random-generator state captured before one function evaluation.

    Args:
        like (torch.Tensor): A tensor on the device the function runs on;
            the CPU generator is always captured, plus that CUDA device's.
    """

    def __init__(self, like: torch.Tensor):
        self.cpu_state = torch.get_rng_state()
        self.devices = _rng_devices(like)
        self.device_states = [
            torch.cuda.get_rng_state(device) for device in self.devices
        ]

    @contextlib.contextmanager
    def replay(self):
        """Restore the captured state; the global state is restored after."""
        with torch.random.fork_rng(devices=self.devices, device_type='cuda'):
            torch.set_rng_state(self.cpu_state)
            for device, state in zip(self.devices, self.device_states):
                torch.cuda.set_rng_state(state, device)
            yield


class AutocastState:
    """Autocast settings of the forward pass, to re-enter in backward.

    Args:
        device_type (str): The device type the stage runs on.
    """

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype: Optional[torch.dtype] = (
            torch.get_autocast_dtype(device_type) if self.enabled else None)
        self.cache_enabled = torch.is_autocast_cache_enabled()

    def enter(self):
        """Context manager that reproduces the captured autocast state."""
        if not self.enabled:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(
            self.device_type,
            dtype=self.dtype,
            enabled=True,
            cache_enabled=self.cache_enabled)


def autocast_active(tensor: torch.Tensor) -> bool:
    """Whether autocast is enabled for ``tensor``'s device type."""
    return torch.is_autocast_enabled(tensor.device.type)


def checkpointed_call(module: nn.Module, *inputs: torch.Tensor):
    """``torch.utils.checkpoint`` whose recomputation leaves BN buffers alone.

    Non-reentrant checkpointing (it works with ``torch.autograd.grad`` and
    inputs that do not require grad) with the RNG state preserved and, in the
    recomputation only, :func:`frozen_norm_buffers` applied to ``module``.

    Args:
        module (nn.Module): The module to run.
        *inputs (torch.Tensor): Its inputs.
    """
    from torch.utils.checkpoint import checkpoint

    def contexts():
        return contextlib.nullcontext(), frozen_norm_buffers([module])

    return checkpoint(
        module, *inputs, use_reentrant=False, context_fn=contexts)
