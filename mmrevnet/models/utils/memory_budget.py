"""The ``memory_budget`` setting: what a user may write, validated once.

A budget is the largest whole training step peak (parameters, gradients,
optimizer state, activations, heads, loss) the model may reach on its
device. Written as:

* a size: an int of bytes, or a string with a unit, ``'10GiB'``,
  ``'7.5G'``, ``'512MiB'``, ``'24GB'``. ``K``/``M``/``G``/``T`` and
  ``KiB``/``MiB``/``GiB``/``TiB`` are powers of 1024 (as ``nvidia-smi``
  and torch's allocator report), ``KB``/``MB``/``GB``/``TB`` powers of
  1000;
* a fraction of the device's total memory, a float in (0, 1]: ``0.8``;
* ``'auto'``: :data:`AUTO_MARGIN` of the memory available when training
  starts: what the device has free plus what the training process holds
  already (the rest is left to the allocator's fragmentation, cuDNN
  workspaces and other processes).

The budget is resolved to bytes on the training device, at the start of
training, by :class:`~mmrevnet.engine.MRevNetMemoryBudgetHook`.
"""

import dataclasses
import numbers
import re
from typing import Optional, Union

__all__ = ['MemoryBudget', 'parse_memory_budget', 'AUTO_MARGIN']

#: The part of the free memory ``'auto'`` plans for.
AUTO_MARGIN = 0.9

_UNITS = {
    '': 1,
    'B': 1,
    'K': 2**10,
    'KIB': 2**10,
    'M': 2**20,
    'MIB': 2**20,
    'G': 2**30,
    'GIB': 2**30,
    'T': 2**40,
    'TIB': 2**40,
    'KB': 10**3,
    'MB': 10**6,
    'GB': 10**9,
    'TB': 10**12,
}
_SIZE = re.compile(r'^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$')
_ALLOWED = (
    'memory_budget must be a size (bytes as an int, or a string such as '
    "'10GiB', '7.5G', '512MiB', '24GB'), a fraction of the device's total "
    "memory in (0, 1] (e.g. 0.8), 'auto' (90% of the memory available when "
    'training starts) or None'
)


@dataclasses.dataclass(frozen=True)
class MemoryBudget:
    """A validated ``memory_budget``.

    Attributes:
        kind (str): ``'bytes'``, ``'fraction'`` or ``'auto'``.
        value (float): Bytes, or the fraction; 0 for ``'auto'``.
        text (str): What the user wrote, for messages.
    """

    kind: str
    value: float
    text: str

    def resolve(self, total_bytes: int, available_bytes: int) -> int:
        """The budget in bytes on a device with this total and available
        memory."""
        if self.kind == 'bytes':
            return int(self.value)
        if self.kind == 'fraction':
            return int(self.value * total_bytes)
        return int(AUTO_MARGIN * available_bytes)


def parse_memory_budget(
    value: Union[None, int, float, str, MemoryBudget],
) -> Optional[MemoryBudget]:
    """Validate a ``memory_budget`` setting.

    Raises:
        ValueError: Naming ``memory_budget`` and the allowed forms.
    """
    if value is None or isinstance(value, MemoryBudget):
        return value
    text = repr(value)
    if isinstance(value, bool):
        raise ValueError(f'{_ALLOWED}; got {text}')
    if isinstance(value, numbers.Integral):
        if value <= 0:
            raise ValueError(f'{_ALLOWED}; got {text}')
        return MemoryBudget('bytes', int(value), text)
    if isinstance(value, numbers.Real):
        if not 0.0 < value <= 1.0:
            raise ValueError(
                f'{_ALLOWED}; got {text} (a float is a fraction of the '
                "device's memory: write a size as an int or a string)"
            )
        return MemoryBudget('fraction', float(value), text)
    if isinstance(value, str):
        if value.strip().lower() == 'auto':
            return MemoryBudget('auto', 0.0, text)
        match = _SIZE.match(value)
        unit = match and _UNITS.get(match.group(2).upper())
        if unit:
            size = float(match.group(1)) * unit
            if size >= 1:
                return MemoryBudget('bytes', int(size), text)
    raise ValueError(f'{_ALLOWED}; got {text}')
