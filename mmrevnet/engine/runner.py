"""An mmengine ``Runner`` that loads its checkpoints with safe globals."""

import contextlib

from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import (
    check_checkpoint_objects,
    find_resumable_checkpoint,
    runner_checkpoint_globals,
)


def _loads_pretrained(model) -> bool:
    """Whether initialising ``model`` reads a ``Pretrained`` checkpoint."""
    for module in model.modules():
        cfgs = getattr(module, 'init_cfg', None)
        cfgs = cfgs if isinstance(cfgs, (list, tuple)) else [cfgs]
        if any(
            isinstance(cfg, dict) and cfg.get('type') == 'Pretrained'
            for cfg in cfgs
        ):
            return True
    return False


@RUNNERS.register_module()
class MRevNetRunner(Runner):
    """mmengine's ``Runner``, loading checkpoints with ``weights_only=True``.

    ``resume``, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` read
    Runner checkpoints (their ``message_hub`` holds HistoryBuffer and numpy
    objects) through :func:`~.checkpoint.runner_checkpoint_globals`, which
    allows checked stand-ins for exactly those objects while the file is
    read and nothing else, at no other time; what ``resume`` goes on to
    read is checked by :func:`~.checkpoint.check_checkpoint_objects`.
    Resuming the latest checkpoint of the work dir (``resume=True``
    without ``load_from``) skips a file that a killed process left
    truncated, saying so (:func:`~.checkpoint.find_resumable_checkpoint`).
    Select it in a config with ``runner_type = 'MRevNetRunner'``;
    everything else is mmengine's.
    """

    def load_or_resume(self) -> None:
        if self._resume and self._load_from is None and not self._has_loaded:
            self._load_from = find_resumable_checkpoint(
                self.work_dir,
                report=lambda message: self.logger.warning(message),
            )
            if self._load_from is None:
                # Nothing complete to resume: mmengine would try its own
                # pick (an empty or truncated file) again.
                self._resume = False
            else:
                self.logger.info(f'Resuming from {self._load_from}')
        super().load_or_resume()

    def load_checkpoint(self, filename, *args, **kwargs):
        with runner_checkpoint_globals(filename):
            checkpoint = super().load_checkpoint(filename, *args, **kwargs)
        check_checkpoint_objects(checkpoint, filename)
        return checkpoint

    def _init_model_weights(self) -> None:
        scope = (
            runner_checkpoint_globals()
            if _loads_pretrained(self.model)
            else contextlib.nullcontext()
        )
        with scope:
            super()._init_model_weights()
