"""Training hooks: non-finite detection, reconstruction-drift monitor and a
non-finite loss check."""

import math
from typing import Dict, List, Optional

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from mmrevnet.reversible import MomentumStage, check_finite


def momentum_stages(model) -> Dict[str, MomentumStage]:
    """Every :class:`MomentumStage` of ``model`` by qualified name."""
    if is_model_wrapper(model):
        model = model.module
    stages = {}
    for name, module in model.named_modules():
        stage = getattr(module, 'stage', None)
        if isinstance(stage, MomentumStage):
            stages[name or stage.name] = stage
    return stages


@HOOKS.register_module()
class MRevNetNonFiniteHook(Hook):
    """Stop training at the first non-finite value of a memory-saving stage.

    Every memory-saving momentum stage records on the device where its
    values stop being finite, in forward and in the reconstruction of the
    backward (``check_finite=True``, the default of every stage; no host
    synchronisation during the step). After each training iteration this
    hook reads those records of the whole model at once, one small
    device-to-host copy where mmengine has just read the loss for its log,
    and raises a ``FloatingPointError`` naming the pass (forward or
    reconstruction), the stage, the block and the iteration, before the
    logger, the checkpoint hook or the next iteration run. Models without
    memory-saving stages are left alone.

    :class:`~mmrevnet.engine.MRevNetRunner` registers it unless the config
    already does; ``custom_hooks=[dict(type='MRevNetNonFiniteHook')]``
    adds it to mmengine's ``Runner``.
    """

    priority = 'ABOVE_NORMAL'

    def before_train(self, runner) -> None:
        model = runner.model
        if is_model_wrapper(model):
            model = model.module
        self.model = model
        # Whatever an earlier forward (outside this loop) recorded is not
        # this run's.
        for stage in momentum_stages(model).values():
            stage.finite.clear()

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        check_finite(self.model, iteration=runner.iter + 1)


@HOOKS.register_module()
class MRevNetDriftHook(Hook):
    """Report how far memory-saving stages drift from the true activations.

    Switches on ``track_drift`` of every momentum stage of the model: each
    stage then keeps its true input and, in every backward pass, measures
    ``max|x0_rec - x0| / max|x0|`` of its reconstruction (two extra stored
    tensors per stage and one device sync). Every ``interval`` iterations
    the maximum per stage over those iterations goes to the training log,
    and each iteration's value to the message hub as
    ``train/drift/<stage>`` (so visualization backends plot it).

    Args:
        interval (int): Iterations per log line. Defaults to 50.
        warn_above (float, optional): Also log a warning when a stage's
            drift exceeds this value. Defaults to 1e-3.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50, warn_above: Optional[float] = 1e-3):
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f'interval must be a positive int, got {interval!r}'
            )
        self.interval = interval
        self.warn_above = warn_above
        self.window_max: Dict[str, float] = {}
        self.history: List[Dict[str, float]] = []

    def before_train(self, runner) -> None:
        self.stages = momentum_stages(runner.model)
        if not self.stages:
            raise ValueError(
                'MRevNetDriftHook: the model has no momentum stages '
                '(MRevNet backbone or MomentumSequential) to monitor'
            )
        for stage in self.stages.values():
            stage.configure(track_drift=True)

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        for name, stage in self.stages.items():
            drift = stage.report.position_drift
            if drift is None:
                continue
            runner.message_hub.update_scalar(f'train/drift/{name}', drift)
            self.window_max[name] = max(self.window_max.get(name, 0.0), drift)
        if self.every_n_train_iters(runner, self.interval) and self.window_max:
            report = dict(self.window_max)
            self.history.append(dict(report, iter=runner.iter + 1))
            text = ', '.join(f'{k} {v:.2e}' for k, v in report.items())
            runner.logger.info(
                f'reconstruction drift (max over the last {self.interval} '
                f'iters, relative): {text}'
            )
            if self.warn_above is not None:
                bad = {k: v for k, v in report.items() if v > self.warn_above}
                if bad:
                    runner.logger.warning(
                        f'reconstruction drift above {self.warn_above:g} in '
                        f'{sorted(bad)}: gamma may be too small for the '
                        'depth; see docs/numerics.md'
                    )
            self.window_max = {}


@HOOKS.register_module()
class MRevNetCheckInvalidLossHook(Hook):
    """Stop training with an error when the loss is not finite.

    Args:
        interval (int): Check every ``interval`` iterations. Defaults to 1.
    """

    priority = 'VERY_LOW'

    def __init__(self, interval: int = 1):
        self.interval = interval

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        if not self.every_n_train_iters(runner, self.interval):
            return
        loss = (outputs or {}).get('loss')
        if loss is None:
            return
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f'loss became {value} at iteration {runner.iter + 1}; '
                'lower the learning rate or check the data'
            )
