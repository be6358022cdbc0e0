"""Strict checkpoint loading for the project's tools.

mmengine's ``Runner`` loads ``load_from`` with ``strict=False``: missing,
unexpected and size-mismatched keys are only logged, and a test run then
reports a metric of a partly random network. :func:`strict_loading`
checks the checkpoint inside the Runner's own loading (a load pre-hook on
the model, so the file is read once, by mmengine) and refuses a
checkpoint that does not fill the model exactly.
"""

import contextlib

from torch import nn

from mmrevnet.models.utils.weight_loading import (
    CheckpointMismatchError,
    KeyReport,
    compare_state_dict,
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
