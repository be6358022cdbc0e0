"""Strict checkpoint loading for the project's tools.

mmengine's ``Runner`` loads ``load_from`` with ``strict=False``: missing,
unexpected and size-mismatched keys are only logged, and a test run then
reports a metric of a partly random network. :func:`strict_loading`
checks the checkpoint inside the Runner's own loading (a load pre-hook on
the model, so the file is read once, by mmengine) and refuses a
checkpoint that does not fill the model exactly.
"""

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List

from torch import nn

from mmrevnet.models.backbones.mrevnet import MRevNet
from mmrevnet.models.utils.weight_loading import (
    CheckpointMismatchError,
    map_resnet_keys,
)

#: The command-line flag of the tools that accepts a partial load.
NON_STRICT_FLAG = '--non-strict'

__all__ = [
    'CheckpointMismatchError',
    'KeyReport',
    'compare_state_dict',
    'strict_loading',
    'run_loading_strictly',
]


@dataclass
class KeyReport:
    """How a checkpoint's tensors fit a model.

    Attributes:
        missing (list[str]): Model keys the checkpoint lacks
            (``num_batches_tracked`` excepted, as mmengine does).
        unexpected (list[str]): Checkpoint keys the model lacks.
        mismatched (list[str]): ``key: checkpoint shape vs model shape``.
    """

    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Whether the checkpoint fills the model exactly."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, first: int = 5) -> str:
        """The first ``first`` keys of each kind, with their counts."""
        lines = []
        for title, keys in (
            ('missing keys', self.missing),
            ('unexpected keys', self.unexpected),
            ('size-mismatched keys', self.mismatched),
        ):
            if not keys:
                continue
            lines.append(f'{len(keys)} {title}:')
            lines.extend(f'    {key}' for key in keys[:first])
            if len(keys) > first:
                lines.append(f'    ... and {len(keys) - first} more')
        return '\n'.join(lines)


def compare_state_dict(model: nn.Module, state_dict, prefix='') -> KeyReport:
    """Compare checkpoint tensors with a model's, as loading would see them.

    MRevNet backbones rename mmpretrain's and torchvision's layouts on load
    (:func:`~mmrevnet.models.utils.weight_loading.map_resnet_keys`); the same
    renaming is applied to a copy here first.

    Args:
        model (nn.Module): The model.
        state_dict (Mapping): The checkpoint's tensors.
        prefix (str): Prefix of the model's keys in ``state_dict``.

    Returns:
        KeyReport: Missing, unexpected and size-mismatched keys.
    """
    mapped = OrderedDict(state_dict)
    for name, module in model.named_modules():
        if isinstance(module, MRevNet):
            map_resnet_keys(module, mapped, prefix + (name and name + '.'))
    own = OrderedDict(
        (prefix + key, value) for key, value in model.state_dict().items()
    )
    report = KeyReport()
    for key, value in own.items():
        if key not in mapped:
            if not key.endswith('num_batches_tracked'):
                report.missing.append(key)
        elif tuple(mapped[key].shape) != tuple(value.shape):
            report.mismatched.append(
                f'{key}: checkpoint {tuple(mapped[key].shape)}, model '
                f'{tuple(value.shape)}'
            )
    report.unexpected = [
        key for key in mapped if key.startswith(prefix) and key not in own
    ]
    return report


@contextlib.contextmanager
def strict_loading(model: nn.Module, strict: bool = True, name: str = ''):
    """Refuse, while active, loading a checkpoint that misfits ``model``.

    Args:
        model (nn.Module): The model (unwrapped from DDP).
        strict (bool): Raise :class:`CheckpointMismatchError` when keys are
            missing, unexpected or of another shape; False lets the load
            proceed (mmengine logs the keys). Defaults to True.
        name (str): The checkpoint's name, for the message. Defaults to ''.
    """

    def check(module, state_dict, prefix, *args):
        if not strict:
            return
        report = compare_state_dict(module, state_dict, prefix)
        if not report.exact:
            raise CheckpointMismatchError(
                f'the checkpoint {name} does not fit the model:\n'
                f'{report.describe()}\n'
                f'(is it for another config, depth or variant? pass '
                f'{NON_STRICT_FLAG} to load the matching tensors anyway)'
            )

    handle = model.register_load_state_dict_pre_hook(check)
    try:
        yield
    finally:
        handle.remove()


def run_loading_strictly(runner, action: str, strict: bool, name: str):
    """``runner.<action>()`` under :func:`strict_loading` of its model.

    What the project's tools do: a misfitting checkpoint raises before any
    training or evaluation, and the tool turns the error into its exit
    status (1).

    Args:
        runner (Runner): A built runner.
        action (str): ``'train'`` or ``'test'``.
        strict (bool): See :func:`strict_loading`.
        name (str): The checkpoint's name, for the message.

    Raises:
        CheckpointMismatchError: The checkpoint does not fit the model.
    """
    from mmengine.model import is_model_wrapper

    model = runner.model
    if is_model_wrapper(model):
        model = model.module
    with strict_loading(model, strict=strict, name=name):
        return getattr(runner, action)()
