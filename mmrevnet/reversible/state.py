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

_NORM_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


@contextlib.contextmanager
def frozen_norm_buffers(modules: Iterable[nn.Module]):
    """Let train-mode BatchNorm layers run without changing their buffers.

    Each train-mode BatchNorm layer (``SyncBatchNorm`` included) gets
    scratch copies of ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` for the duration; the originals are put back
    afterwards, untouched. The layer still normalises with the statistics
    of the batch it sees, and it records the same saved tensors as in the
    forward pass, which non-reentrant ``torch.utils.checkpoint`` checks
    (switching ``track_running_stats`` off instead would change them).
    Layers in eval mode are left alone: they never change their buffers.

    Args:
        modules (Iterable[nn.Module]): Roots whose submodules are searched.
    """
    swapped = []
    seen = set()
    for root in modules:
        for module in root.modules():
            if id(module) in seen:
                continue
            seen.add(id(module))
            if not (
                isinstance(module, _BatchNorm)
                and module.training
                and module.track_running_stats
            ):
                continue
            originals = {}
            for name in _NORM_BUFFERS:
                buffer = getattr(module, name, None)
                if buffer is not None:
                    originals[name] = buffer
                    setattr(module, name, buffer.clone())
            swapped.append((module, originals))
    try:
        yield
    finally:
        for module, originals in swapped:
            for name, buffer in originals.items():
                setattr(module, name, buffer)


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
            torch.get_autocast_dtype(device_type) if self.enabled else None
        )
        self.cache_enabled = torch.is_autocast_cache_enabled()

    @property
    def low_precision(self) -> bool:
        """Whether the functions run in a 16-bit autocast dtype."""
        return self.enabled and self.dtype in (torch.float16, torch.bfloat16)

    def enter(self):
        """Context manager that reproduces the captured autocast state."""
        if not self.enabled:
            return torch.autocast(self.device_type, enabled=False)
        return torch.autocast(
            self.device_type,
            dtype=self.dtype,
            enabled=True,
            cache_enabled=self.cache_enabled,
        )


def autocast_active(tensor: torch.Tensor) -> bool:
    """Whether autocast is enabled for ``tensor``'s device type."""
    return torch.is_autocast_enabled(tensor.device.type)


def eager_under_compile(function):
    """Run ``function`` outside ``torch.compile``'s graphs (a graph break).

    The memory-saving paths recompute in the backward pass with hooks that
    a compiled graph cannot express: frozen BatchNorm buffers, replayed
    random numbers, a hand-written backward calling
    ``torch.autograd.grad``. Under ``torch.compile`` they run eagerly, as
    they do without it, and the code around them is compiled; each call
    is one graph break (``torch._dynamo.explain`` counts them). Without
    ``torch.compile`` the wrapper does nothing.

    Args:
        function (Callable): The function to keep eager.
    """
    # torch's own wrapper: dynamo never compiles its frame. (A wrapper of
    # ours would be a frame that dynamo compiles, and in a backward it
    # guards on the arguments: ``ctx.saved_tensors`` read there unpacks
    # tensors a checkpoint packed, which torch refuses the second time.)
    return torch.compiler.disable(function, recursive=True)


def _call_with_arguments(function, kwargs, *args):
    return function(*args, **kwargs)


def _tensors(tree) -> List[torch.Tensor]:
    """The tensors of ``tree``, searched through lists, tuples, dicts."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    return []


@contextlib.contextmanager
def _recomputation(
    norm_modules: List[nn.Module],
    tensors: List[torch.Tensor],
    versions: List[int],
):
    """The context of a recomputation: BN buffers frozen, and inputs
    written in place since the forward refused (``Tensor._version``, the
    counter autograd checks its own saved tensors with, as checkpoint does
    for the tensors passed as positional arguments themselves): the
    recomputation would silently differ from the forward."""
    for tensor, version in zip(tensors, versions):
        if tensor._version != version:
            raise RuntimeError(
                'an input of a recomputed (checkpointed) function was '
                'modified in place after the forward pass, so its '
                'activations cannot be recomputed; clone it before writing '
                'to it'
            )
    with frozen_norm_buffers(norm_modules):
        yield


@eager_under_compile
def checkpointed_call(
    function,
    *args,
    norm_modules: Optional[Iterable[nn.Module]] = None,
    **kwargs,
):
    """``function(*args, **kwargs)``, its activations recomputed in backward.

    The one recomputation mechanism of the package (stem, transition
    blocks, plain-path stages, decode and auxiliary heads): non-reentrant
    ``torch.utils.checkpoint``, so tensors nested in lists and dicts, also
    in keyword arguments, are seen (their devices' random-generator states
    are replayed), ``torch.autograd.grad`` and inputs that do not require
    grad work, and the forward's autocast state is re-entered. In the
    recomputation only, :func:`frozen_norm_buffers` keeps train-mode
    BatchNorm buffers from being updated a second time, and an input
    written in place since the forward is refused.

    Args:
        function (Callable): The module or function to run.
        *args: Its positional arguments.
        norm_modules (Iterable[nn.Module], optional): Modules whose BN
            buffers the recomputation must not touch. Defaults to
            ``[function]`` when ``function`` is a module.
        **kwargs: Its keyword arguments.
    """
    from torch.utils.checkpoint import checkpoint

    if norm_modules is None:
        norm_modules = [function] if isinstance(function, nn.Module) else []
    norm_modules = list(norm_modules)
    # Tensors inside containers and keyword arguments: checkpoint keeps
    # them by reference, without the version check of the saved ones.
    inputs = _tensors(
        ([a for a in args if not isinstance(a, torch.Tensor)], kwargs)
    )
    versions = [tensor._version for tensor in inputs]

    def contexts():
        return (
            contextlib.nullcontext(),
            _recomputation(norm_modules, inputs, versions),
        )

    # Positional tensors are saved by checkpoint (saved-tensor hooks and
    # version check apply); the keyword arguments go as one positional
    # dict, where checkpoint finds their devices and no name of theirs can
    # clash with its own keywords. The recomputation runs inside the
    # backward of a compiled step as well and stays eager like the forward.
    return checkpoint(
        _eager_call,
        function,
        kwargs,
        *args,
        use_reentrant=False,
        context_fn=contexts,
    )


_eager_call = eager_under_compile(_call_with_arguments)
