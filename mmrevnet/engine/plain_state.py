"""Runner checkpoints that ``torch.load(weights_only=True)`` reads as is.

mmengine's ``Runner`` saves its ``MessageHub`` with the ``HistoryBuffer``
objects of the logged scalars (and their numpy arrays). torch's default
``weights_only=True`` refuses those classes, so mmseg's and mmpretrain's
own tools (``tools/test.py``, ``init_model``, the inferencers) cannot open
such a checkpoint unless their user widens torch's allowlist.

:class:`MRevNetPlainCheckpointHook` writes the message hub in plain types
instead (each buffer as two tensors of the same dtype as its arrays and its
``max_length``) and turns them back into ``HistoryBuffer`` objects when the
Runner loads the checkpoint, before ``resume`` hands the hub to mmengine,
so resuming restores exactly what was saved. ``MRevNetRunner`` registers
the hook; with mmengine's own ``Runner`` add
``custom_hooks=[dict(type='MRevNetPlainCheckpointHook')]``.
"""

import numbers
from typing import Any, Dict

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS

#: Key of the message hub's state that marks plain log scalars.
PLAIN_MARK = 'mmrevnet_plain_log_scalars'
_BUFFER_KEYS = ('log_history', 'count_history', 'max_length')


def _plain_value(value: Any, where: str) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers/tensors."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return type(value)(
            (k, _plain_value(v, f'{where}.{k}')) for k, v in value.items()
        )
    if isinstance(value, (list, tuple)) and not hasattr(value, '_fields'):
        return type(value)(_plain_value(v, where) for v in value)
    if value is None or isinstance(
        value, (str, bytes, bool, numbers.Number, torch.Tensor)
    ):
        return value
    raise TypeError(
        f'message hub entry {where!r} is a {type(value).__name__}, which '
        'torch.load(weights_only=True) cannot read; log plain numbers, '
        'strings, tensors or containers of them'
    )


def plain_message_hub(state: Dict) -> Dict:
    """``MessageHub.state_dict()`` in types ``weights_only`` accepts.

    Args:
        state (dict): The message hub's ``state_dict()``.

    Returns:
        dict: The same keys; each ``HistoryBuffer`` of ``log_scalars`` is a
        dict of ``log_history`` and ``count_history`` (tensors of the
        arrays' dtypes) and ``max_length``; numpy values of
        ``runtime_info`` are Python numbers or tensors.
    """
    if state.get(PLAIN_MARK):
        return state
    scalars = {}
    for key, buffer in state['log_scalars'].items():
        if not isinstance(buffer, HistoryBuffer):
            raise TypeError(
                f'log scalar {key!r} is a {type(buffer).__name__}, '
                'expected a HistoryBuffer'
            )
        logs, counts = buffer.data
        scalars[key] = dict(
            log_history=torch.from_numpy(np.array(logs)),
            count_history=torch.from_numpy(np.array(counts)),
            max_length=int(buffer.max_length),
        )
    plain = dict(state)
    plain['log_scalars'] = scalars
    plain['runtime_info'] = _plain_value(state['runtime_info'], 'runtime_info')
    plain['resumed_keys'] = {
        str(k): bool(v) for k, v in state['resumed_keys'].items()
    }
    plain[PLAIN_MARK] = True
    return plain


def restore_message_hub(state: Dict) -> Dict:
    """Inverse of :func:`plain_message_hub` (other states pass through).

    Args:
        state (dict): A message hub state read from a checkpoint.

    Returns:
        dict: The state with ``HistoryBuffer`` objects, as
        ``MessageHub.load_state_dict`` expects.
    """
    if not (isinstance(state, dict) and state.get(PLAIN_MARK)):
        return state
    scalars = {}
    for key, entry in state['log_scalars'].items():
        if not (isinstance(entry, dict) and set(entry) == set(_BUFFER_KEYS)):
            raise ValueError(
                f'message_hub.log_scalars[{key!r}] of the checkpoint is not '
                f'a saved buffer (expected keys {list(_BUFFER_KEYS)})'
            )
        logs, counts = entry['log_history'], entry['count_history']
        if not (
            isinstance(logs, torch.Tensor)
            and isinstance(counts, torch.Tensor)
            and logs.dim() == 1
            and logs.shape == counts.shape
        ):
            raise ValueError(
                f'message_hub.log_scalars[{key!r}]: log_history and '
                'count_history must be 1-d tensors of one length'
            )
        scalars[key] = HistoryBuffer(
            log_history=logs.numpy(),
            count_history=counts.numpy(),
            max_length=int(entry['max_length']),
        )
    restored = {k: v for k, v in state.items() if k != PLAIN_MARK}
    restored['log_scalars'] = scalars
    return restored


@HOOKS.register_module()
class MRevNetPlainCheckpointHook(Hook):
    """Save the message hub in plain types; restore it on load.

    Checkpoints then open with ``torch.load(weights_only=True)`` in any
    process (mmseg's and mmpretrain's tools and inferencers) with torch's
    allowlist unchanged; ``resume`` restores the ``HistoryBuffer`` objects
    element for element.
    """

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = plain_message_hub(
                checkpoint['message_hub']
            )

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = restore_message_hub(
                checkpoint['message_hub']
            )
