"""Training hooks with a real mmengine Runner on generated data."""

import logging

import pytest
from mmengine.registry import RUNNERS

from mmrevnet.datasets.synthetic import generate_cityscapes
from mmrevnet.engine import (
    MRevNetCheckInvalidLossHook,
    MRevNetDriftHook,
    build_train_config,
)

DEMO = (
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cityscapes')
    generate_cityscapes(str(root), num_train=4, num_val=2, size=(64, 128))
    return str(root)


def _runner(data_root, work_dir, backbone=None, **options):
    cfg_options = {
        'train_dataloader.dataset.data_root': data_root,
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
        'train_cfg.max_iters': 4,
        'train_cfg.val_interval': 100,
        'default_hooks.logger.interval': 2,
        'default_hooks.checkpoint.interval': 100,
        'log_level': 'INFO',
    }
    for key, value in (backbone or {}).items():
        cfg_options[f'model.backbone.{key}'] = value
    cfg_options.update(options)
    cfg = build_train_config(
        DEMO, work_dir=str(work_dir), cfg_options=cfg_options
    )
    return RUNNERS.build(cfg)


@pytest.mark.slow
def test_drift_hook_reports_large_drift_for_unstable_gamma(
    data_root, tmp_path, caplog
):
    reports = {}
    for name, backbone in {
        'stable': dict(gamma=0.9, zero_init_residual=False),
        # gamma 0.1 without stored states: rounding errors grow by
        # (1/0.1)**5 over the 5 momentum blocks of layer3.
        'unstable': dict(
            gamma=0.1, max_amplification=1e30, zero_init_residual=False
        ),
    }.items():
        hook = MRevNetDriftHook(interval=2)
        runner = _runner(data_root, tmp_path / name, backbone)
        runner.register_hook(hook)
        with caplog.at_level(logging.INFO, logger=runner.logger.name):
            runner.train()
        assert len(hook.history) == 2
        reports[name] = max(
            max(v for k, v in r.items() if k != 'iter') for r in hook.history
        )
        scalars = runner.message_hub.log_scalars
        assert any(k.startswith('train/drift/') for k in scalars)
        log = (tmp_path / name).rglob('*.log')
        text = ''.join(p.read_text() for p in log)
        assert 'reconstruction drift (max over the last 2 iters' in text
    assert reports['stable'] < 1e-4, reports
    assert reports['unstable'] > 1e-3, reports
    assert reports['unstable'] > 1e3 * reports['stable']


RESNET = dict(
    _delete_=True,
    type='ResNetV1c',
    depth=34,
    dilations=(1, 1, 2, 4),
    strides=(1, 2, 1, 1),
    base_channels=16,
    stem_channels=32,
    contract_dilation=True,
)


def test_drift_hook_needs_momentum_stages(data_root, tmp_path):
    runner = _runner(data_root, tmp_path, None, **{'model.backbone': RESNET})
    runner.register_hook(MRevNetDriftHook())
    with pytest.raises(ValueError, match='no momentum stages'):
        runner.train()


@pytest.mark.slow
def test_invalid_loss_hook_stops_training(data_root, tmp_path):
    # A plain backbone, so that the first non-finite value is the loss (an
    # m-RevNet stage would already stop on non-finite activations).
    runner = _runner(
        data_root,
        tmp_path,
        None,
        **{
            'model.backbone': RESNET,
            'optim_wrapper.optimizer.lr': 1e30,
            'train_cfg.max_iters': 6,
        },
    )
    runner.register_hook(MRevNetCheckInvalidLossHook())
    with pytest.raises(FloatingPointError, match='loss became'):
        runner.train()
