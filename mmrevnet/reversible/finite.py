"""Where a memory-saving stage first met a non-finite value.

The memory-saving backward evaluates every residual function again on
states it rebuilds from the stage end, so a NaN or Inf anywhere in the
forward pass reaches every gradient, and a reconstruction that diverges
(``gamma`` too small for the depth, a function overflowing in 16 bits)
produces non-finite gradients from finite activations. Either way the
plain path's symptom, a non-finite loss, says nothing about where it
started.

Each stage therefore keeps a :class:`FiniteRecord`: a small boolean tensor
on the stage's device, written by the stage itself in forward and in the
reconstruction of the backward, read by no one during the step. Per state
``(x_c, v_c)`` (the state after ``c`` functions; ``c = 0`` is the stage
input) it records whether the forward produced a non-finite value there,
and whether the reconstruction did. The cost is one ``aminmax`` reduction of
the velocity per function and direction (``min`` and ``max`` propagate NaN
and reach +-Inf, so both finite means the tensor is), a handful of kernels
per stage, and no host synchronisation: :func:`check_finite` reads all
stages at once, one device-to-host copy per step, where the training loop
already waits for the device (mmengine reads the loss for its log in the
same place; :class:`~mmrevnet.engine.MRevNetNonFiniteHook` calls it).

Positions are checked at the stage input and at the stage end; between
them a non-finite position shows as a non-finite velocity of the next
function (``F(x)`` of a NaN is NaN), so the first function named is exact
unless a finite position overflows on its own (values near 3e38).
"""

from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

FORWARD = 0
RECONSTRUCTION = 1
_ROWS = ('forward', 'reconstruction')


def value_range(tensor: Tensor) -> Tuple[Tensor, Tensor]:
    """``(min, max)`` of ``tensor`` as 0-dim device tensors (one kernel).

    Both are finite exactly when every element is. An empty tensor gives
    zeros (it holds no non-finite value).
    """
    if tensor.numel() == 0:
        zero = tensor.new_zeros(())
        return zero, zero
    low, high = torch.aminmax(tensor.detach())
    return low, high


def merge_ranges(
    a: Tuple[Tensor, Tensor], b: Tuple[Tensor, Tensor]
) -> Tuple[Tensor, Tensor]:
    """The range of two tensors together (NaN propagates)."""
    return torch.minimum(a[0], b[0]), torch.maximum(a[1], b[1])


class FiniteRecord:
    """Device-side flags of one stage: where values were not finite.

    ``flags[row, c]`` (``row`` :data:`FORWARD` or :data:`RECONSTRUCTION`)
    is True when the state after ``c`` functions was not finite; it stays
    True until :meth:`clear` (several forwards before a read are combined).

    Args:
        num_functions (int): Functions of the stage.
    """

    def __init__(self, num_functions: int):
        self.num_functions = num_functions
        self.flags: Optional[Tensor] = None

    def add(
        self,
        row: int,
        first_state: int,
        ranges: Sequence[Tuple[Tensor, Tensor]],
    ) -> None:
        """Record the states ``first_state, first_state + 1, ...``.

        Args:
            row (int): :data:`FORWARD` or :data:`RECONSTRUCTION`.
            first_state (int): Index of the state ``ranges[0]`` belongs to.
            ranges (Sequence[tuple]): :func:`value_range` of each state.
        """
        if not ranges:
            return
        bounds = torch.stack([b for pair in ranges for b in pair])
        nonfinite = ~torch.isfinite(bounds).view(len(ranges), 2).all(dim=1)
        flags = self._flags_on(bounds.device)
        flags[row, first_state : first_state + len(ranges)] |= nonfinite

    def clear(self) -> None:
        """Forget what was recorded (device-side, no synchronisation)."""
        if self.flags is not None:
            self.flags.zero_()

    def first_nonfinite(self, row: int) -> Optional[int]:
        """Index of the first non-finite state of ``row``, in the order the
        pass visits them (ascending in forward, descending in the
        reconstruction); None if all finite. Synchronises the host."""
        if self.flags is None:
            return None
        return _first(self.flags[row].tolist(), row)

    def raise_if_nonfinite(self, name: str, row: int) -> None:
        """Raise :class:`FloatingPointError` now (synchronises the host).

        Args:
            name (str): Stage name for the message.
            row (int): Which pass to check.
        """
        state = self.first_nonfinite(row)
        if state is not None:
            raise FloatingPointError(
                _message(
                    row,
                    f'momentum stage {name!r}',
                    _describe_state(row, state, self.num_functions),
                )
            )

    def _flags_on(self, device: torch.device) -> Tensor:
        if self.flags is None or self.flags.device != device:
            self.flags = torch.zeros(
                2, self.num_functions + 1, dtype=torch.bool, device=device
            )
        return self.flags


def _first(values: List[bool], row: int) -> Optional[int]:
    order = range(len(values))
    if row == RECONSTRUCTION:
        order = reversed(order)
    for index in order:
        if values[index]:
            return index
    return None


def _function_label(
    index: int, num_functions: int, names: Optional[Sequence[str]]
) -> str:
    label = f'function {index} (of {num_functions}, counted from 0)'
    if names is not None and index < len(names) and names[index]:
        label = f'block {names[index]!r}, {label}'
    return label


def _describe_state(
    row: int,
    state: int,
    num_functions: int,
    names: Optional[Sequence[str]] = None,
) -> str:
    if row == RECONSTRUCTION:
        return 'the rebuilt input of ' + _function_label(
            state, num_functions, names
        )
    if state == 0:
        return (
            'the stage input (already non-finite when it reached the '
            'stage: from the data or a layer before the stage)'
        )
    return 'the output of ' + _function_label(state - 1, num_functions, names)


def _message(
    row: int, where: str, what: str, iteration: Optional[int] = None
) -> str:
    when = '' if iteration is None else f' at iteration {iteration}'
    if row == FORWARD:
        return (
            f'Non-finite value (NaN/Inf) in the forward pass{when}, first '
            f'in {where}, at {what}: a non-finite input or weight, or an '
            'overflow in that block (under fp16 autocast: values above '
            '65504); lower the learning rate or check the data.'
        )
    return (
        'Non-finite value (NaN/Inf) in the reconstruction of the '
        f'memory-saving backward{when} (the forward pass was finite), '
        f'first in {where}, at {what}: the reconstruction diverged (gamma '
        'too small for the number of blocks; see max_amplification in '
        'docs/numerics.md) or a residual function overflowed when '
        'evaluated again.'
    )


StageSource = Union[nn.Module, Mapping[str, object]]


def _stages_with_names(source: StageSource):
    """``(name, stage, function names)`` in forward (module) order."""
    if isinstance(source, nn.Module):
        module_names = {id(m): n for n, m in source.named_modules()}
        found = []
        for name, module in source.named_modules():
            # A momentum stage is what carries a FiniteRecord.
            stage = getattr(module, 'stage', None)
            if not isinstance(getattr(stage, 'finite', None), FiniteRecord):
                continue
            functions = getattr(module, 'functions', None) or []
            names = [module_names.get(id(f), '') for f in functions]
            found.append((name or stage.name, stage, names))
        return found
    return [(name, stage, None) for name, stage in source.items()]


def check_finite(source: StageSource, iteration: Optional[int] = None) -> None:
    """Raise if any memory-saving stage met a non-finite value; then clear.

    Reads every stage's :class:`FiniteRecord` with one device-to-host copy
    (call it once per step, after the backward, where the loop waits for
    the device anyway) and names the first place the forward pass went
    non-finite, or, with a finite forward, the first place the
    reconstruction did.

    Args:
        source (nn.Module | Mapping[str, MomentumStage]): A model (every
            module with a ``stage`` attribute holding a
            :class:`~.stage.MomentumStage` is checked, in module order, its
            blocks named from ``functions``), or stages by name in forward
            order.
        iteration (int, optional): Named in the error. Defaults to None.

    Raises:
        FloatingPointError: Naming the pass, the stage, the block and the
            iteration.
    """
    stages = [
        (name, stage, names)
        for name, stage, names in _stages_with_names(source)
        if stage.finite.flags is not None
    ]
    if not stages:
        return
    values: List[List[List[bool]]] = [[] for _ in stages]
    by_device: Dict[torch.device, List[int]] = {}
    for i, (_, stage, _) in enumerate(stages):
        by_device.setdefault(stage.finite.flags.device, []).append(i)
    for indices in by_device.values():
        # One copy per device: every stage's flags in one tensor.
        flat = torch.cat(
            [stages[i][1].finite.flags.flatten() for i in indices]
        ).tolist()
        for i in indices:
            width = stages[i][1].finite.flags.shape[1]
            values[i] = [flat[:width], flat[width : 2 * width]]
            flat = flat[2 * width :]
    for _, stage, _ in stages:
        stage.finite.clear()
    # The forward visits stages in order; the backward in reverse order.
    indices = list(range(len(stages)))
    for row, order in ((FORWARD, indices), (RECONSTRUCTION, indices[::-1])):
        for i in order:
            name, stage, names = stages[i]
            state = _first(values[i][row], row)
            if state is None:
                continue
            what = _describe_state(
                row, state, stage.finite.num_functions, names
            )
            raise FloatingPointError(
                _message(row, f'momentum stage {name!r}', what, iteration)
            )
