"""An mmengine ``Runner`` that loads its checkpoints with safe globals."""

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import runner_checkpoint_globals
from .hooks import MRevNetNonFiniteHook


@RUNNERS.register_module()
class MRevNetRunner(Runner):
    """mmengine's ``Runner``, loading checkpoints with ``weights_only=True``.

    ``resume``, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` read
    Runner checkpoints (their ``message_hub`` holds HistoryBuffer and numpy
    objects) through :func:`~.checkpoint.runner_checkpoint_globals`, which
    allows checked stand-ins for exactly those objects while the file is
    read and nothing else, at no other time. It also registers
    :class:`~.hooks.MRevNetNonFiniteHook` (unless the config does), so a
    NaN or Inf in a memory-saving stage stops training with the stage,
    block and iteration named. Select it in a config with
    ``runner_type = 'MRevNetRunner'``; everything else is mmengine's.
    """

    def register_hooks(self, default_hooks=None, custom_hooks=None):
        super().register_hooks(default_hooks, custom_hooks)
        if not any(isinstance(h, MRevNetNonFiniteHook) for h in self.hooks):
            self.register_hook(MRevNetNonFiniteHook())

    def load_checkpoint(self, filename, *args, **kwargs):
        with runner_checkpoint_globals(filename):
            return super().load_checkpoint(filename, *args, **kwargs)

    def _init_model_weights(self) -> None:
        with runner_checkpoint_globals():
            super()._init_model_weights()
