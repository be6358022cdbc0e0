"""Training interrupted at iteration k and resumed ends bit-equal.

Deterministic settings (CPU): ``randomness=dict(seed=0,
deterministic=True)``, ``num_workers=0`` (the pipeline draws its random
numbers from the main process's numpy generator), the same number of
intra-op threads in both runs. The demo's RandomFlip, shuffling
``InfiniteSampler``, AdamW and both parameter schedulers stay: on resume
mmengine's ``IterBasedTrainLoop`` runs the data pipeline for the ``k``
skipped batches again, so the sampler order and the flips after
iteration ``k`` replay identically (checked here, per iteration).
"""

import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from mmrevnet.engine import load_runner_checkpoint
from tools.cli.config import build_train_config

from .helpers import DEMO_CONFIG, tiny_options

TOTAL, STOP = 4, 2
BATCH = 2


class _Interrupted(Exception):
    pass


class Interrupt(Hook):
    """Raises after iteration ``at`` (after its checkpoint is saved)."""

    priority = 'LOWEST'

    def __init__(self, at: int):
        self.at = at

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        if runner.iter + 1 == self.at:
            raise _Interrupted


class Batches(Hook):
    """Records the images and flips of every iteration."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self.seen = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.seen[runner.iter + 1] = [
            (osp.basename(sample.img_path), sample.flip)
            for sample in data_batch['data_samples']
        ]


@pytest.fixture
def deterministic_restored():
    """``deterministic=True`` switches torch-global flags: restore them."""
    algorithms = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def train(data_root, work_dir, name, resume=False, interrupt_at=None):
    options = tiny_options(data_root, TOTAL, BATCH)
    options.update(
        {
            'randomness.seed': 0,
            'randomness.deterministic': True,
            'default_hooks.checkpoint.interval': STOP,
            # Warm-up over the first STOP iterations, then poly decay: the
            # schedulers' state crosses the interruption.
            'param_scheduler.0.end': STOP,
            'param_scheduler.1.begin': STOP,
            'param_scheduler.1.end': TOTAL,
            'visualizer.name': f'reliability_resume_{name}',
            'experiment_name': f'reliability_resume_{name}',
        }
    )
    cfg = build_train_config(
        DEMO_CONFIG, work_dir=work_dir, resume=resume, cfg_options=options
    )
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.train_dataloader.sampler.type == 'InfiniteSampler'
    assert cfg.train_dataloader.sampler.shuffle
    assert cfg.train_dataloader.dataset.pipeline[2].type == 'RandomFlip'
    runner = RUNNERS.build(cfg)
    batches = Batches()
    runner.register_hook(batches)
    if interrupt_at is None:
        runner.train()
    else:
        runner.register_hook(Interrupt(interrupt_at))
        with pytest.raises(_Interrupted):
            runner.train()
    return batches.seen


def load(path):
    return load_runner_checkpoint(path)


def assert_equal_tree(a, b, where='checkpoint'):
    """Every tensor bit-equal, everything else equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_tree(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f'{where}[{i}]')
    else:
        assert a == b, (where, a, b)


@pytest.mark.slow
@pytest.mark.usefixtures('one_thread', 'deterministic_restored')
def test_resume_is_bit_exact(tmp_path, reliability_data):
    straight = str(tmp_path / 'straight')
    broken = str(tmp_path / 'broken')
    seen = train(reliability_data, straight, 'straight')
    seen_before = train(reliability_data, broken, 'first', interrupt_at=STOP)
    assert sorted(seen_before) == list(range(1, STOP + 1))
    assert not osp.exists(osp.join(broken, f'iter_{TOTAL}.pth'))
    # resume=True: the latest checkpoint of the work dir, as --resume.
    seen_after = train(reliability_data, broken, 'resumed', resume=True)
    assert sorted(seen_after) == list(range(STOP + 1, TOTAL + 1))

    # The same images and flips in every iteration; some flipped, some not.
    assert {**seen_before, **seen_after} == seen
    flips = [flip for batch in seen.values() for _, flip in batch]
    assert any(flips) and not all(flips), seen

    for it in (STOP, TOTAL):
        expected = load(osp.join(straight, f'iter_{it}.pth'))
        actual = load(osp.join(broken, f'iter_{it}.pth'))
        assert actual['meta']['iter'] == expected['meta']['iter'] == it
        assert_equal_tree(expected['state_dict'], actual['state_dict'])
        # AdamW moments and step counts, learning rates, scheduler state.
        assert_equal_tree(expected['optimizer'], actual['optimizer'])
        assert_equal_tree(
            expected['param_schedulers'], actual['param_schedulers']
        )
    # The weights did move after the interruption.
    first = load(osp.join(straight, f'iter_{STOP}.pth'))['state_dict']
    last = load(osp.join(straight, f'iter_{TOTAL}.pth'))['state_dict']
    assert any(
        not torch.equal(first[k], last[k])
        for k in last
        if last[k].is_floating_point()
    )
