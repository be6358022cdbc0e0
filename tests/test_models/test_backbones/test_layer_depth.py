"""Layer-wise learning-rate decay: the layer ids of mmpretrain's ResNet."""

import copy
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import RUNNERS, DefaultScope

import mmrevnet  # noqa: F401  (compat shims before mmpretrain)
from tools.dataset_converters.generators.synthetic import generate_imagefolder

REPO = osp.dirname(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
)
NARROW = dict(stem_channels=8, base_channels=8)
PARAMWISE = dict(layer_decay_rate=0.75)


def _classifier(backbone: dict, channels: int):
    from mmpretrain.registry import MODELS

    cfg = dict(
        type='ImageClassifier',
        backbone=dict(out_indices=(3,), **NARROW, **backbone),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=4, in_channels=channels),
    )
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


def _lrs(model) -> dict:
    from mmpretrain.engine.optimizers import (
        LearningRateDecayOptimWrapperConstructor,
    )

    constructor = LearningRateDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)),
        copy.deepcopy(PARAMWISE),
    )
    wrapper = constructor(model)
    return {
        group['param_name']: (group['layer_id'], group['lr'])
        for group in wrapper.optimizer.param_groups
    }


@pytest.mark.parametrize('depth', [50, 101, 152])
def test_learning_rates_equal_mmpretrain_resnet(depth):
    """Same layer id and lr for every parameter as mmpretrain's ResNetV1c."""
    channels = 8 * 8 * 4
    reference = _classifier(dict(type='ResNetV1c', depth=depth), channels)
    ours = _classifier(
        dict(type='MRevNetV1c', depth=depth, residual_fn='branch'), channels
    )
    expected, got = _lrs(reference), _lrs(ours)

    # The deep stem's keys are mmseg's (stem.0.weight), mmpretrain's are
    # ConvModule's (stem.0.conv.weight): compare the stem as a whole.
    def split(groups):
        stem = sorted(v for k, v in groups.items() if '.stem.' in k)
        rest = {k: v for k, v in groups.items() if '.stem.' not in k}
        return stem, rest

    (stem_ref, rest_ref), (stem, rest) = split(expected), split(got)
    assert len(stem) == len(stem_ref) and stem == stem_ref
    assert rest == rest_ref
    # Not all equal: the decay is there (stem lowest, head highest).
    ids = sorted({layer for layer, _ in got.values()})
    assert ids[0] == 0 and len(ids) > 3
    assert got['head.fc.weight'][1] == 1.0
    assert got['backbone.stem.0.weight'][1] < 1.0


def test_layout_outside_mmpretrain_counts_blocks():
    """Depth 18 (mmpretrain refuses it): one id per block in stages 2-3."""
    model = _classifier(dict(type='MRevNetV1c', depth=18), 64)
    backbone = model.backbone
    depth = [
        backbone.get_layer_depth(
            f'backbone.layer{s}.{b}.conv1.weight', 'backbone.'
        )
        for s in (1, 2, 3, 4)
        for b in (0, 1)
    ]
    assert [d[0] for d in depth] == [1, 1, 2, 3, 4, 5, 6, 6]
    assert {d[1] for d in depth} == {8}
    assert backbone.get_layer_depth('backbone.stem.0.weight', 'backbone.') == (
        0,
        8,
    )
    assert backbone.get_layer_depth('head.fc.weight', 'backbone.') == (7, 8)


@pytest.mark.slow
def test_layer_decay_recipe_trains(tmp_path):
    """mmpretrain's recipe with layer-wise lr decay, m-RevNet swapped in."""
    root = str(tmp_path / 'imagefolder')
    generate_imagefolder(
        root, num_classes=4, per_class_train=2, per_class_val=1, size=(32, 32)
    )
    from tools.cli.config import build_train_config

    cfg = build_train_config(
        osp.join(REPO, 'configs', 'mrevnet', 'mrevnetv1c18_8xb32_in1k.py'),
        work_dir=str(tmp_path / 'work_dir'),
    )
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    cfg.train_dataloader = ConfigDict(
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            type='CustomDataset',
            data_root=root,
            data_prefix='train',
            pipeline=pipeline,
        ),
        sampler=dict(type='DefaultSampler', shuffle=True),
    )
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.model.head.num_classes = 4
    cfg.model.head.topk = (1,)
    cfg.data_preprocessor.num_classes = 4
    cfg.train_cfg = ConfigDict(by_epoch=True, max_epochs=2)
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = ConfigDict(seed=0)
    cfg.optim_wrapper = ConfigDict(
        optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
        constructor='LearningRateDecayOptimWrapperConstructor',
        paramwise_cfg=copy.deepcopy(PARAMWISE),
    )
    cfg.param_scheduler = None
    assert isinstance(cfg, Config)
    runner = RUNNERS.build(cfg)
    before = {k: v.clone() for k, v in runner.model.state_dict().items()}
    runner.train()
    assert runner.iter == 4
    assert np.isfinite(runner.message_hub.get_scalar('train/loss').current())
    groups = runner.optim_wrapper.optimizer.param_groups
    scales = {g['param_name']: g['lr_scale'] for g in groups}
    assert scales['head.fc.weight'] == 1.0
    assert scales['backbone.stem.0.weight'] == pytest.approx(0.75**7)
    after = runner.model.state_dict()
    assert not torch.equal(
        before['backbone.layer4.1.conv1.weight'],
        after['backbone.layer4.1.conv1.weight'],
    )
