"""Soak: 120 iterations of the demo recipe keep the memory flat.

The memory-saving backward of m-RevNet stores per-step state on the
autograd context (stage ends, random-generator states, parameter
references). Anything it kept alive beyond the step would grow the
process's resident memory and its number of live tensors with every
iteration.
"""

import gc

import psutil
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from tools.cli.config import build_train_config

from .helpers import DEMO_CONFIG, tiny_options

ITERS, EARLY = 120, 20
BATCH = 2
#: Allowed RSS change between iteration 20 and 120 (5% of about 1185 MiB,
#: 59 MiB; measured over 50 -> 300: +3.2 MiB). One leaked set of per-step
#: activations at this size is ~1 MiB, i.e. ~100 MiB over the 100
#: iterations.
RSS_TOLERANCE = 0.05
#: Allowed growth of the live tensor count (measured: 0); a leak of one
#: tensor per step gives 100.
TENSOR_SLACK = 25


def live_tensors() -> int:
    return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


class MemoryProbe(Hook):
    """Records RSS and live tensors after the given iterations."""

    priority = 'LOWEST'

    def __init__(self, at):
        self.at = set(at)
        self.rss = {}
        self.tensors = {}

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        it = runner.iter + 1
        if it in self.at:
            # Only what is still referenced counts, not pending garbage.
            gc.collect()
            self.rss[it] = psutil.Process().memory_info().rss
            self.tensors[it] = live_tensors()


@pytest.mark.slow
@pytest.mark.usefixtures('one_thread')
def test_soak_memory_is_flat(tmp_path, reliability_data):
    options = tiny_options(reliability_data, ITERS, BATCH)
    options.update(
        {
            # Save once at the end; log every 20 iterations.
            'default_hooks.checkpoint.interval': ITERS,
            'default_hooks.logger.interval': EARLY,
            'visualizer.name': 'reliability_soak',
            'experiment_name': 'reliability_soak',
        }
    )
    cfg = build_train_config(
        DEMO_CONFIG, work_dir=str(tmp_path), cfg_options=options
    )
    backbone = cfg.model.backbone
    assert backbone.type == 'MRevNetV1c' and backbone.memory_saving
    runner = RUNNERS.build(cfg)
    probe = MemoryProbe(at=(EARLY, ITERS))
    runner.register_hook(probe)
    runner.train()
    assert runner.iter == ITERS

    early, late = probe.rss[EARLY], probe.rss[ITERS]
    mib = 2.0**20
    print(
        f'RSS after iteration {EARLY}: {early / mib:.1f} MiB, after '
        f'{ITERS}: {late / mib:.1f} MiB ({(late - early) / mib:+.1f} MiB, '
        f'{100 * (late - early) / early:+.2f}%); live tensors '
        f'{probe.tensors[EARLY]} -> {probe.tensors[ITERS]}'
    )
    assert abs(late - early) <= RSS_TOLERANCE * early
    assert probe.tensors[ITERS] - probe.tensors[EARLY] <= TENSOR_SLACK
