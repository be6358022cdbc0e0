"""End to end: the shipped segmentation configs train, resume and test.

For each decode head (PSPHead, ASPPHead, UPerHead) and each data layout
(Cityscapes, ADE20K), the shipped config trains for two iterations on the
CPU with ``--cfg-options`` style overrides only (see ``conftest.py``),
validates with its own ``IoUMetric``, writes a checkpoint and resumes from
it. ``tools/test.py`` (once per head) and ``tools/train.py --amp`` run as
subprocesses, and mmseg's own PSPNet config trains with only its backbone
type swapped for ``MRevNetV1c``.
"""

import glob
import json
import math
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from torch import nn

from mmrevnet.engine import load_runner_checkpoint
from mmrevnet.models.backbones.mrevnet import MRevNetV1c
from tools.cli.config import build_train_config

from .helpers import (
    CONFIGS,
    CROP,
    HEADS,
    MAX_ITERS,
    SCALES,
    check_pipelines,
    cli_options,
    config_path,
    run_tool,
    tiny_options,
)

pytestmark = pytest.mark.slow

COMBINATIONS = sorted(CONFIGS)
#: ``tools/test.py`` runs once per head, on both layouts overall.
TEST_SCRIPT_RUNS = [
    ('pspnet', 'cityscapes'),
    ('deeplabv3', 'ade20k'),
    ('upernet', 'cityscapes'),
]


def _ids(combinations):
    return [f'{head}-{layout}' for head, layout in combinations]


def _is_number(value) -> bool:
    return isinstance(value, (float, np.floating)) and math.isfinite(value)


class _Recorder(Hook):
    """Records the iteration at the start and the losses of training."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.start_iter = None
        self.losses = []

    def before_train(self, runner):
        self.start_iter = runner.iter

    def after_train_iter(
        self, runner, batch_idx, data_batch=None, outputs=None
    ):
        self.losses.append(float(outputs['loss']))


@pytest.mark.parametrize('head,layout', COMBINATIONS, ids=_ids(COMBINATIONS))
def test_train_validate_checkpoint_resume(head, layout, trained_run, tmp_path):
    run = trained_run(head, layout)
    assert run['backbone'] == 'MRevNetV1c'
    assert run['decode_head'] == HEADS[head]
    assert run['iter'] == MAX_ITERS

    # (a) one validation, at the end, with mmseg's IoUMetric.
    assert len(run['val_metrics']) == 1, run['val_metrics']
    metrics = run['val_metrics'][0]
    for key in ('aAcc', 'mIoU', 'mAcc'):
        assert _is_number(metrics[key]), metrics
        assert 0 <= metrics[key] <= 100, metrics

    # (b) the checkpoint, with the dataset meta of the layout.
    assert osp.isfile(run['checkpoint'])
    checkpoint = load_runner_checkpoint(run['checkpoint'])
    assert checkpoint['meta']['iter'] == MAX_ITERS
    classes = checkpoint['meta']['dataset_meta']['classes']
    assert len(classes) == (19 if layout == 'cityscapes' else 150)
    assert any(
        k.startswith('backbone.layer4.') for k in checkpoint['state_dict']
    )

    # (c) resume from the work dir's last checkpoint for one more iteration.
    options = dict(run['options'])
    options['train_cfg.max_iters'] = MAX_ITERS + 1
    options['visualizer.name'] = f'vis_resume_{head}_{layout}'
    cfg = build_train_config(
        run['config'],
        work_dir=run['work_dir'],
        resume=True,
        cfg_options=options,
    )
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    runner = RUNNERS.build(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    runner.train()
    assert recorder.start_iter == MAX_ITERS
    assert runner.iter == MAX_ITERS + 1
    assert len(recorder.losses) == 1 and math.isfinite(recorder.losses[0])
    assert osp.isfile(osp.join(run['work_dir'], f'iter_{MAX_ITERS + 1}.pth'))


def _test_metrics(work_dir):
    """The metrics that ``tools/test.py`` dumps to ``<stamp>/<stamp>.json``."""
    files = glob.glob(osp.join(work_dir, '*', '*.json'))
    assert files, f'no metrics json under {work_dir}'
    with open(sorted(files)[-1]) as f:
        return json.loads(f.read().strip().splitlines()[-1])


@pytest.mark.parametrize(
    'head,layout', TEST_SCRIPT_RUNS, ids=_ids(TEST_SCRIPT_RUNS)
)
def test_test_script(head, layout, trained_run, data_roots, tmp_path):
    run = trained_run(head, layout)
    options = tiny_options(head, layout, data_roots[layout])
    work_dir = str(tmp_path / 'test')
    args = [
        'tools/test.py',
        run['config'],
        run['checkpoint'],
        '--work-dir',
        work_dir,
    ]
    show_dir = str(tmp_path / 'show')
    if head == 'pspnet':
        args += ['--show-dir', show_dir]
    output = run_tool(args + ['--cfg-options', *cli_options(options)])
    assert 'mIoU' in output, output[-3000:]
    metrics = _test_metrics(work_dir)
    # Same checkpoint, same (val = test) split and pipeline: the same mIoU.
    assert metrics['mIoU'] == pytest.approx(
        float(run['val_metrics'][0]['mIoU']), abs=0.011
    )
    if head == 'pspnet':
        painted = glob.glob(osp.join(show_dir, '**', '*.png'), recursive=True)
        assert len(painted) == 4, painted


def test_train_script_amp(data_roots, tmp_path):
    """``tools/train.py --amp --cfg-options``: bf16 autocast on the CPU."""
    head, layout = 'upernet', 'ade20k'
    options = tiny_options(head, layout, data_roots[layout])
    work_dir = str(tmp_path / 'train')
    output = run_tool(
        [
            'tools/train.py',
            config_path(head, layout),
            '--work-dir',
            work_dir,
            '--amp',
            '--cfg-options',
            *cli_options(options),
        ]
    )
    assert osp.isfile(osp.join(work_dir, f'iter_{MAX_ITERS}.pth')), output
    assert 'mIoU' in output
    wrapper = (
        'AmpOptimWrapper'
        if torch.cuda.is_available()
        else 'MRevNetBF16CPUAmpOptimWrapper'
    )
    dumped = Config.fromfile(
        osp.join(work_dir, osp.basename(CONFIGS[(head, layout)]))
    )
    assert dumped.optim_wrapper.type == wrapper
    assert wrapper in output


def test_swap_backbone_in_mmseg_config(data_roots, tmp_path):
    """mmseg's PSPNet config with only ``backbone.type`` swapped trains.

    The user config is the two lines a user writes; SyncBN stays (mmengine
    reverts it to BN in a non-distributed run). The other overrides only
    point the config at the generated data and make it CPU sized.
    """
    user_config = tmp_path / 'pspnet_mrevnet50_swap.py'
    user_config.write_text(
        "_base_ = 'mmseg::pspnet/pspnet_r50-d8_4xb2-80k_cityscapes-"
        "512x1024.py'\n"
        "custom_imports = dict(imports=['mmrevnet'], "
        'allow_failed_imports=False)\n'
        "model = dict(backbone=dict(type='MRevNetV1c'))\n"
    )
    layout = 'cityscapes'
    options = {
        'model.pretrained': None,
        'model.data_preprocessor.size': CROP,
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_roots[layout],
        'train_dataloader.dataset.pipeline.2.scale': SCALES[layout],
        'train_dataloader.dataset.pipeline.3.crop_size': CROP,
        'train_cfg.max_iters': 1,
        'default_hooks.checkpoint.save_last': False,
        'visualizer.name': 'vis_swap',
    }
    cfg = build_train_config(
        str(user_config), work_dir=str(tmp_path / 'work'), cfg_options=options
    )
    check_pipelines(cfg)
    backbone = cfg.model.backbone
    assert backbone.type == 'MRevNetV1c'
    assert backbone.depth == 50 and backbone.norm_cfg.type == 'SyncBN'
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    runner = RUNNERS.build(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    runner.train()
    model = runner.model
    assert type(model.backbone) is MRevNetV1c
    # pretrained=None: from scratch, so residual_fn=None builds 'branch'
    assert model.backbone.residual_fn == 'branch'
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert len(recorder.losses) == 1
    assert math.isfinite(recorder.losses[0]) and recorder.losses[0] > 0
