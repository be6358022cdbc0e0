"""Training hooks with a real mmengine Runner on generated data."""

import logging

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from mmrevnet.engine import (
    MRevNetCheckInvalidLossHook,
    MRevNetDriftHook,
    MRevNetNonFiniteHook,
)
from mmrevnet.models import MRevNetV1c
from mmrevnet.reversible import check_finite
from tools.cli.config import build_train_config
from tools.dataset_converters.generators.synthetic import generate_cityscapes

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


def test_drift_hook_needs_momentum_stages():
    """Refused when training starts (``before_train``), before a step."""
    from types import SimpleNamespace

    from mmseg.models.backbones import ResNetV1c

    arguments = {
        k: v for k, v in RESNET.items() if k not in ('_delete_', 'type')
    }
    plain = ResNetV1c(**arguments)
    with pytest.raises(ValueError, match='no momentum stages'):
        MRevNetDriftHook().before_train(SimpleNamespace(model=plain))


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


# -- non-finite detection (on by default) -----------------------------------


def _narrow_backbone(**kwargs):
    torch.manual_seed(0)
    model = MRevNetV1c(
        depth=50,
        base_channels=8,
        stem_channels=8,
        zero_init_residual=False,
        **kwargs,
    )
    return model.train()


def _backbone_step(model, x, autocast_dtype=None):
    with torch.autocast(
        'cpu',
        dtype=autocast_dtype or torch.bfloat16,
        enabled=autocast_dtype is not None,
    ):
        outs = model(x)
    sum(o.float().square().mean() for o in outs).backward()


@pytest.mark.parametrize('layer', ['layer1', 'layer2', 'layer3', 'layer4'])
def test_nan_weight_of_each_stage_is_named(layer):
    model = _narrow_backbone()
    block = getattr(model, layer)[2]  # a momentum block (function 1)
    with torch.no_grad():
        # The centre tap: layer4 runs at 1x1, where the others only meet
        # the zero padding.
        block.conv2.weight[0, 0, 1, 1] = float('nan')
    _backbone_step(model, torch.randn(2, 3, 32, 32))
    with pytest.raises(FloatingPointError) as info:
        check_finite(model, iteration=5)
    text = str(info.value)
    assert 'forward pass at iteration 5' in text
    assert f"stage {layer!r}, at the output of block '{layer}.2'" in text


def test_nan_in_transition_block_is_named_as_the_stage_input():
    model = _narrow_backbone()
    with torch.no_grad():
        model.layer3[0].conv1.weight[0, 0, 0, 0] = float('nan')
    _backbone_step(model, torch.randn(2, 3, 32, 32))
    with pytest.raises(FloatingPointError, match="'layer3', at the stage in"):
        check_finite(model)


def test_fp16_overflow_is_named():
    """CPU fp16 autocast: a block whose convolution exceeds 65504 gives Inf
    there; in fp32 the same weights stay finite (BN renormalises)."""
    model = _narrow_backbone()
    with torch.no_grad():
        model.layer3[3].conv1.weight.mul_(1e5)
    x = torch.randn(2, 3, 32, 32)
    _backbone_step(model, x)
    check_finite(model)  # fp32: finite
    _backbone_step(model, x, autocast_dtype=torch.float16)
    with pytest.raises(FloatingPointError, match="block 'layer3.3'"):
        check_finite(model)


class _PoisonWeight(Hook):
    """Puts a NaN into one backbone weight before iteration ``at``."""

    def __init__(self, at):
        self.at = at

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.iter + 1 == self.at:
            with torch.no_grad():
                weight = runner.model.backbone.layer3[1].conv1.weight
                weight[0, 0, 0, 0] = float('nan')


@pytest.mark.slow
def test_runner_stops_at_the_first_non_finite_iteration(data_root, tmp_path):
    """MRevNetRunner registers MRevNetNonFiniteHook by default."""
    runner = _runner(data_root, tmp_path)
    assert type(runner).__name__ == 'MRevNetRunner'
    hooks = [h for h in runner.hooks if isinstance(h, MRevNetNonFiniteHook)]
    assert len(hooks) == 1
    runner.register_hook(_PoisonWeight(at=3))
    with pytest.raises(FloatingPointError) as info:
        runner.train()
    text = str(info.value)
    assert 'forward pass at iteration 3' in text
    assert "stage 'backbone.layer3', at the output of block " in text
    assert "'backbone.layer3.1'" in text
    assert runner.iter == 2  # stopped in iteration 3, before it counted


def test_runner_does_not_add_a_second_hook(data_root, tmp_path):
    runner = _runner(
        data_root,
        tmp_path,
        None,
        custom_hooks=[dict(type='MRevNetNonFiniteHook')],
    )
    hooks = [h for h in runner.hooks if isinstance(h, MRevNetNonFiniteHook)]
    assert len(hooks) == 1
