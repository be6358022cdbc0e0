"""An mmengine ``Runner`` that loads its checkpoints with safe globals and
runs several processes on CPUs."""

import contextlib
import logging
import sys

import torch
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper, revert_sync_batchnorm
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .checkpoint import (
    check_checkpoint_objects,
    find_resumable_checkpoint,
    runner_checkpoint_globals,
)
from .distributed import cpu_model_wrapper_cfg, init_cpu_launcher_env
from .hooks import MRevNetNonFiniteHook
from .memory_budget import MRevNetMemoryBudgetHook
from .plain_state import MRevNetPlainCheckpointHook


def _has_sync_bn(model: torch.nn.Module) -> bool:
    return any(
        'SyncBatchNorm' in type(module).__name__ for module in model.modules()
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
    """mmengine's ``Runner``, loading checkpoints with ``weights_only=True``
    and training on several CPU processes.

    ``resume``, ``load_from`` and ``init_cfg=dict(type='Pretrained')`` read
    Runner checkpoints (their ``message_hub`` holds HistoryBuffer and numpy
    objects) through :func:`~.checkpoint.runner_checkpoint_globals`, which
    allows checked stand-ins for exactly those objects while the file is
    read and nothing else, at no other time; what ``resume`` goes on to
    read is checked by :func:`~.checkpoint.check_checkpoint_objects`.
    Resuming the latest checkpoint of the work dir (``resume=True``
    without ``load_from``) skips a file that a killed process left
    truncated, saying so (:func:`~.checkpoint.find_resumable_checkpoint`).

    Without CUDA and with a launcher (``torchrun ... --launcher pytorch``,
    as mmseg's and mmpretrain's ``tools/train.py`` start it), the gloo
    process group is created before mmengine's ``init_dist`` would call
    ``torch.cuda.set_device``, SyncBN layers become BN (each process
    normalises with its own batch statistics) and the model is wrapped in
    :class:`~.distributed.MRevNetCPUDistributedDataParallel`. A launcher
    that cannot run on CPUs fails before anything is built, with one line
    naming the command that works.

    Select it in a config with ``runner_type = 'MRevNetRunner'`` (the
    shipped configs do); builders that honour ``runner_type`` (``RUNNERS.
    build(cfg)``, mmseg's and mmpretrain's ``tools/train.py``) then use it.
    ``Runner.from_cfg(cfg)`` called on mmengine's class builds mmengine's
    Runner whatever the config says. Everything else is mmengine's.

    It saves its checkpoints through
    :class:`~.plain_state.MRevNetPlainCheckpointHook`, so that
    ``torch.load(weights_only=True)`` (mmseg's and mmpretrain's tools)
    opens them with torch's allowlist unchanged. It also registers
    :class:`~.hooks.MRevNetNonFiniteHook` (unless the config does), so a
    NaN or Inf in a memory-saving stage stops training with the stage,
    block and iteration named, and
    :class:`~.memory_budget.MRevNetMemoryBudgetHook`, which turns a
    backbone's ``memory_budget`` into a plan before the first iteration
    (and does nothing without one).
    """

    def setup_env(self, env_cfg: dict) -> None:
        if self.distributed:
            init_cpu_launcher_env(
                self.launcher,
                (env_cfg or {}).get('dist_cfg'),
                script=sys.argv[0] if sys.argv and sys.argv[0] else '',
            )
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg, model):
        if (
            not self.distributed
            or torch.cuda.is_available()
            or is_model_wrapper(model)
        ):
            return super().wrap_model(model_wrapper_cfg, model)
        if self.cfg.get('sync_bn') is not None:
            raise ValueError(
                f'sync_bn={self.cfg.sync_bn!r} needs CUDA: SyncBatchNorm '
                f'does not run on CPUs (remove sync_bn from the config)'
            )
        if _has_sync_bn(model):
            print_log(
                'SyncBN is unavailable without CUDA: every SyncBN of the '
                'model is BN in this multi-process CPU run (each process '
                'normalises with its own batch statistics)',
                logger='current',
                level=logging.WARNING,
            )
            model = revert_sync_batchnorm(model)
        model_wrapper_cfg = cpu_model_wrapper_cfg(
            model_wrapper_cfg, self.cfg.get('find_unused_parameters', False)
        )
        return super().wrap_model(model_wrapper_cfg, model)

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

    def register_hooks(self, default_hooks=None, custom_hooks=None) -> None:
        super().register_hooks(default_hooks, custom_hooks)
        if not any(
            isinstance(hook, MRevNetPlainCheckpointHook) for hook in self.hooks
        ):
            self.register_hook(MRevNetPlainCheckpointHook())
        if not any(isinstance(h, MRevNetNonFiniteHook) for h in self.hooks):
            self.register_hook(MRevNetNonFiniteHook())
        if not any(isinstance(h, MRevNetMemoryBudgetHook) for h in self.hooks):
            self.register_hook(MRevNetMemoryBudgetHook())

    def load_checkpoint(
        self,
        filename,
        map_location='cpu',
        strict: bool = False,
        revise_keys=((r'^module.', ''),),
    ):
        """``Runner.load_checkpoint``, with the objects of the file checked
        before anything reads them.

        The same steps as mmengine's (its ``_load_checkpoint`` and
        ``_load_checkpoint_to_model``, the two halves of its method), with
        :func:`~.checkpoint.check_checkpoint_objects` between them: a
        refused file raises :class:`~.checkpoint.UntrustedCheckpointError`
        before the ``after_load_checkpoint`` hooks and the model's
        ``load_state_dict`` (and a strict key check) see it.
        """
        from mmengine.runner.checkpoint import (
            _load_checkpoint,
            _load_checkpoint_to_model,
        )

        with runner_checkpoint_globals(filename):
            checkpoint = _load_checkpoint(filename, map_location=map_location)
        check_checkpoint_objects(checkpoint, filename)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model
        if is_model_wrapper(model):
            model = model.module
        checkpoint = _load_checkpoint_to_model(
            model, checkpoint, strict, revise_keys=list(revise_keys)
        )
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def _init_model_weights(self) -> None:
        scope = (
            runner_checkpoint_globals()
            if _loads_pretrained(self.model)
            else contextlib.nullcontext()
        )
        with scope:
            super()._init_model_weights()
