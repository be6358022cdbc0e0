"""Memory-saving (recomputed, BN-exact) decode and auxiliary heads.

:func:`enable_memory_saving` makes an unchanged mmseg head (``PSPHead``,
``ASPPHead``, ``UPerHead``, ``FCNHead``, any ``BaseDecodeHead``, in fact
any module) recompute its activations in the backward pass instead of
storing them. It replaces the module's ``forward`` on that instance only:
the class, the state-dict keys, ``loss``/``predict``/``loss_by_feat`` and
the printed model stay those of the original head, so mmseg checkpoints
load and the head's own methods are used unchanged.

Two granularities:

* ``'head'``: the whole ``forward`` is one recomputed unit. It saves only
  the head's inputs, which are the backbone's outputs and are saved
  anyway, so the head adds no stored activation at all. In the backward
  the whole head's graph exists at once, for the head's backward only.
* ``'module'``: every parametrised submodule the head calls (for
  ``UPerHead``: the pyramid pooling module, each lateral and FPN
  convolution, the bottlenecks, ``conv_seg``) is a unit of its own. Each
  saves its input, so the tensors passed between the units of the head
  stay stored; the graph rebuilt in the backward is one unit's.

Which one wins is measured in ``docs/benchmark/segmentor.md``.
"""

from typing import Iterator, List, Sequence

import torch
from torch import nn

from mmrevnet.reversible.state import checkpointed_call

__all__ = [
    'GRANULARITIES',
    'enable_memory_saving',
    'disable_memory_saving',
    'is_memory_saving',
    'recompute_units',
]

#: Accepted ``granularity`` values.
GRANULARITIES = ('head', 'module')


class _RecomputedForward:
    """Instance-level ``forward`` of a module whose activations are
    recomputed (:func:`~mmrevnet.reversible.state.checkpointed_call`);
    falls back to the module's own forward when nothing would be saved
    (eval mode, ``no_grad``)."""

    def __init__(self, module: nn.Module):
        self.module = module
        # The forward as it is now: an instance-level forward set by
        # someone else is wrapped, and put back by disable.
        self.previous = module.__dict__.get('forward')
        self.plain_forward = module.forward

    def __call__(self, *args, **kwargs):
        module = self.module
        if not (module.training and torch.is_grad_enabled()):
            # Eval mode runs the plain head (FLOP counters, inference and
            # exports see ordinary modules); BN would not update anyway.
            return self.plain_forward(*args, **kwargs)
        return checkpointed_call(
            self.plain_forward, *args, norm_modules=[module], **kwargs
        )


def _check_granularity(granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(
            f'granularity must be one of {GRANULARITIES}, got {granularity!r}'
        )


def recompute_units(head: nn.Module, granularity: str) -> List[nn.Module]:
    """The modules whose ``forward`` is recomputed for ``granularity``.

    ``'head'``: ``[head]``. ``'module'``: the head's children that hold
    parameters, where containers without a ``forward`` of their own
    (``nn.ModuleList``, ``nn.ModuleDict``) are replaced by their elements,
    since the head calls those elements one by one.

    Args:
        head (nn.Module): The head.
        granularity (str): One of :data:`GRANULARITIES`.

    Returns:
        list[nn.Module]: The units.
    """
    _check_granularity(granularity)
    if granularity == 'head':
        return [head]

    def units(module: nn.Module) -> Iterator[nn.Module]:
        for child in module.children():
            if next(child.parameters(), None) is None:
                continue  # dropout, pooling: nothing to recompute for
            if type(child) in (nn.ModuleList, nn.ModuleDict):
                yield from units(child)
            else:
                yield child

    return list(units(head))


def is_memory_saving(module: nn.Module) -> bool:
    """Whether :func:`enable_memory_saving` was applied to ``module``'s
    forward (or, for ``'module'`` granularity, to one of its units)."""
    return any(
        isinstance(m.__dict__.get('forward'), _RecomputedForward)
        for m in module.modules()
    )


def enable_memory_saving(
    head: nn.Module,
    granularity: str = 'head',
    nested: Sequence[nn.Module] = (),
) -> List[nn.Module]:
    """Recompute ``head``'s activations in the backward pass.

    In training (``head.training`` and grad enabled) the forward saves only
    the inputs of each recomputed unit; the backward recomputes the unit
    with the forward's random numbers (dropout masks) and autocast state,
    without updating BatchNorm running statistics a second time. In eval
    mode and under ``no_grad`` the head runs plainly. Undo with
    :func:`disable_memory_saving`.

    Args:
        head (nn.Module): The head, e.g. an mmseg ``BaseDecodeHead``.
        granularity (str): ``'head'`` (the whole forward is one unit) or
            ``'module'`` (each parametrised submodule is a unit).
            Defaults to ``'head'``.
        nested (Sequence[nn.Module]): Submodules of ``head`` recomputed as
            units of their own inside the head's recomputation (with
            ``'head'``): in the head's backward only their inputs and one
            unit's graph exist, at the cost of running them once more.
            Defaults to ().

    Returns:
        list[nn.Module]: The modules whose forward was replaced.

    Raises:
        ValueError: For an unknown ``granularity``, or when memory saving
            is already enabled on ``head`` or inside it.
    """
    _check_granularity(granularity)
    if is_memory_saving(head):
        raise ValueError(
            f'memory saving is already enabled on {type(head).__name__}'
        )
    if nested and granularity != 'head':
        raise ValueError("nested units need granularity='head'")
    inside = {id(m) for m in head.modules()}
    for unit in nested:
        if id(unit) not in inside or unit is head:
            raise ValueError(
                f'nested unit {type(unit).__name__} is not a submodule of '
                f'{type(head).__name__}'
            )
    units = list(nested) + recompute_units(head, granularity)
    for unit in units:
        unit.forward = _RecomputedForward(unit)
    return units


def disable_memory_saving(head: nn.Module) -> None:
    """Restore the plain forward of ``head`` and of its submodules."""
    for module in head.modules():
        forward = module.__dict__.get('forward')
        if isinstance(forward, _RecomputedForward):
            del module.forward
            if forward.previous is not None:
                module.forward = forward.previous
