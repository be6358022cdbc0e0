"""Classification with mmpretrain: configs, digits export, seg handoff."""

import copy
import importlib.util
import inspect
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import RUNNERS, DefaultScope

import mmrevnet  # noqa: F401  (compat shims before mmseg/mmpretrain)
from mmrevnet.engine import load_runner_checkpoint
from mmrevnet.models import MRevNet, MRevNetV1c
from tools.cli.config import build_train_config
from tools.dataset_converters.generators.digits import (
    DIGITS_CLASSES,
    DIGITS_MANIFEST,
    export_digits,
    load_digits_arrays,
    split_digits,
)
from tools.dataset_converters.generators.synthetic import generate_imagefolder

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
IN1K = osp.join(REPO, 'configs', 'mrevnet')
DIGITS = osp.join(REPO, 'configs', 'digits')
DEPTH_CHANNELS = {18: 512, 50: 2048, 101: 2048, 152: 2048}
# MRevNetV1c takes MRevNet's arguments, fixing deep_stem and avg_down.
MREVNET_ARGS = set(inspect.signature(MRevNet).parameters) - {
    'deep_stem',
    'avg_down',
}


def _build_classifier(model_cfg):
    from mmpretrain.registry import MODELS

    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(copy.deepcopy(model_cfg))


# -- 1. ImageNet configs ------------------------------------------------------


@pytest.mark.parametrize('depth', sorted(DEPTH_CHANNELS))
def test_in1k_configs(depth):
    """The mmpretrain recipes with an MRevNetV1c backbone build and run."""
    cfg = Config.fromfile(osp.join(IN1K, f'mrevnetv1c{depth}_8xb32_in1k.py'))
    assert cfg.default_scope == 'mmpretrain'
    assert 'mmrevnet' in cfg.custom_imports.imports
    backbone = cfg.model.backbone
    assert backbone.type == 'MRevNetV1c' and backbone.depth == depth
    assert tuple(backbone.out_indices) == (3,)
    # Only arguments that MRevNetV1c knows survive from mmpretrain's dict.
    assert set(backbone) - {'type'} <= MREVNET_ARGS
    # Same momentum settings as the segmentation configs (the handoff).
    seg = Config.fromfile(
        osp.join(REPO, 'configs', '_base_', 'models', 'mrevnet_v1c.py')
    ).mrevnet_v1c
    for key, value in seg.items():
        assert backbone[key] == value, key
    assert cfg.model.type == 'ImageClassifier'
    assert cfg.model.neck.type == 'GlobalAveragePooling'
    assert cfg.model.head.type == 'LinearClsHead'
    assert cfg.model.head.in_channels == DEPTH_CHANNELS[depth]
    assert cfg.model.head.num_classes == 1000
    # The recipe is mmpretrain's ResNetV1c one.
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.optim_wrapper.optimizer.lr == 0.1
    assert cfg.train_cfg.max_epochs == 100

    model = _build_classifier(cfg.model)
    assert type(model.backbone) is MRevNetV1c
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32), mode='tensor')
    assert logits.shape == (1, 1000)


def test_in1k_metafile_lists_the_configs():
    """metafile.yml names every config of the folder, and only those."""
    import yaml

    with open(osp.join(IN1K, 'metafile.yml'), encoding='utf-8') as f:
        meta = yaml.safe_load(f)
    configs = {m['Config'] for m in meta['Models']}
    expected = {
        f'configs/mrevnet/{name}'
        for name in os.listdir(IN1K)
        if name.endswith('_in1k.py')
    }
    assert configs == expected
    for model in meta['Models']:
        assert model['Name'] + '.py' == osp.basename(model['Config'])
        assert model['In Collection'] == meta['Collections'][0]['Name']


# -- 2. classification -> segmentation handoff --------------------------------


def _tiny_imagefolder_cfg(cfg: Config, root: str, work_dir: str) -> Config:
    """Overrides for a 2-iteration CPU run on a generated image folder."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]

    def loader(split, shuffle):
        return ConfigDict(
            batch_size=4,
            num_workers=0,
            persistent_workers=False,
            dataset=dict(
                type='CustomDataset',
                data_root=root,
                data_prefix=split,
                pipeline=pipeline,
            ),
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
        )

    cfg.work_dir = work_dir
    cfg.train_dataloader = loader('train', True)
    cfg.val_dataloader = loader('val', False)
    cfg.val_evaluator = ConfigDict(type='Accuracy', topk=(1,))
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.model.head.num_classes = 4
    cfg.model.head.topk = (1,)
    cfg.data_preprocessor.num_classes = 4
    cfg.train_cfg = ConfigDict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = ConfigDict(seed=0)
    return cfg


@pytest.mark.slow
def test_classifier_checkpoint_initialises_segmentor(tmp_path):
    """Train mrevnetv1c18_8xb32_in1k for 2 iterations, load it into a PSPNet.

    The mmpretrain checkpoint (``backbone.*``, ``head.*``) initialises the
    backbone of an mmseg segmentor through ``init_cfg=dict(type=
    'Pretrained', prefix='backbone.')``, and every backbone tensor
    (parameters and BN buffers) equals the trained one.
    """
    root = str(tmp_path / 'imagefolder')
    generate_imagefolder(
        root,
        num_classes=4,
        per_class_train=2,
        per_class_val=1,
        size=(32, 32),
    )
    cfg = build_train_config(
        osp.join(IN1K, 'mrevnetv1c18_8xb32_in1k.py'),
        work_dir=str(tmp_path / 'work_dir'),
    )
    cfg = _tiny_imagefolder_cfg(cfg, root, str(tmp_path / 'work_dir'))
    runner = RUNNERS.build(cfg)
    initial = {
        k: v.clone() for k, v in runner.model.backbone.state_dict().items()
    }
    runner.train()
    assert runner.iter == 2  # 8 images, batch 4, one epoch
    assert np.isfinite(runner.message_hub.get_scalar('train/loss').current())
    assert 'val/accuracy/top1' in runner.message_hub.log_scalars
    checkpoint = osp.join(str(tmp_path / 'work_dir'), 'epoch_1.pth')
    assert osp.isfile(checkpoint)
    saved = load_runner_checkpoint(checkpoint)['state_dict']
    trained = {
        k[len('backbone.') :]: v
        for k, v in saved.items()
        if k.startswith('backbone.')
    }
    assert any(k.startswith('head.') for k in saved)
    # The two iterations changed the weights and the BN statistics.
    assert not torch.equal(trained['stem.0.weight'], initial['stem.0.weight'])
    assert not torch.equal(
        trained['stem.1.running_mean'], initial['stem.1.running_mean']
    )
    live = runner.model.backbone.state_dict()
    assert all(torch.equal(live[k], v) for k, v in trained.items())

    from mmseg.registry import MODELS as SEG_MODELS

    norm_cfg = dict(type='BN', requires_grad=True)
    backbone = dict(
        copy.deepcopy(cfg.model.backbone.to_dict()),
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        norm_cfg=norm_cfg,
        init_cfg=dict(
            type='Pretrained', checkpoint=checkpoint, prefix='backbone.'
        ),
    )
    segmentor_cfg = dict(
        type='EncoderDecoder',
        _scope_='mmseg',
        data_preprocessor=dict(
            type='SegDataPreProcessor', size=(64, 64), pad_val=0
        ),
        backbone=backbone,
        decode_head=dict(
            type='PSPHead',
            in_channels=512,
            in_index=3,
            channels=32,
            pool_scales=(1, 2, 3, 6),
            dropout_ratio=0.1,
            num_classes=4,
            norm_cfg=norm_cfg,
            align_corners=False,
            loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0),
        ),
    )
    segmentor = SEG_MODELS.build(segmentor_cfg)
    assert type(segmentor.backbone) is MRevNetV1c
    before = segmentor.backbone.state_dict()
    assert not torch.equal(before['stem.0.weight'], trained['stem.0.weight'])
    # The classifier checkpoint is a Runner checkpoint (message hub): a
    # script reads it with the scoped safe globals, as MRevNetRunner does.
    from mmrevnet.engine import runner_checkpoint_globals

    with runner_checkpoint_globals(checkpoint):
        segmentor.init_weights()
    loaded = segmentor.backbone.state_dict()
    assert set(loaded) == set(trained)
    unequal = [k for k in loaded if not torch.equal(loaded[k], trained[k])]
    assert not unequal, unequal
    segmentor.eval()
    with torch.no_grad():
        logits = segmentor(torch.randn(1, 3, 64, 64), mode='tensor')
    assert logits.shape == (1, 4, 8, 8)


# -- 3. digits ----------------------------------------------------------------


def test_split_digits_is_stratified_and_deterministic():
    _, labels = load_digits_arrays()
    assert labels.shape == (1797,)
    split = split_digits(labels, 0.2, seed=0)
    assert len(split['train']) + len(split['val']) == 1797
    assert not set(split['train']) & set(split['val'])
    for digit in range(10):
        total = int((labels == digit).sum())
        assert (labels[split['val']] == digit).sum() == round(0.2 * total)
    again = split_digits(labels, 0.2, seed=0)
    assert all(np.array_equal(split[s], again[s]) for s in split)
    other = split_digits(labels, 0.2, seed=1)
    assert not np.array_equal(split['val'], other['val'])


def test_export_digits(tmp_path):
    """Real digits as a 32x32 RGB image folder that CustomDataset reads."""
    from mmpretrain.datasets import CustomDataset

    root = str(tmp_path / 'digits')
    summary = export_digits(root)
    assert not summary['skipped']
    assert summary['num_train'] + summary['num_val'] == 1797
    assert summary['classes'] == list(DIGITS_CLASSES)
    assert osp.isfile(osp.join(root, DIGITS_MANIFEST))
    images, labels = load_digits_arrays()
    split = split_digits(labels, 0.2, 0)
    for name in ('train', 'val'):
        files = sorted(
            osp.join(d, f)
            for d, _, fs in os.walk(osp.join(root, name))
            for f in fs
        )
        assert len(files) == len(split[name])
        indices = sorted(int(osp.basename(f)[:-4]) for f in files)
        assert indices == split[name].tolist()
    # One image: its folder is its label, and it is the upscaled digit.
    index = int(split['val'][0])
    path = osp.join(root, 'val', str(labels[index]), f'{index:04d}.png')
    bgr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert bgr.shape == (32, 32, 3) and bgr.dtype == np.uint8
    assert (bgr[..., 0] == bgr[..., 1]).all()
    small = cv2.resize(bgr[..., 0], (8, 8), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(small.ravel(), images[index].ravel())[0, 1] > 0.9

    dataset = CustomDataset(data_root=root, data_prefix='val', pipeline=[])
    assert dataset.CLASSES == DIGITS_CLASSES
    assert len(dataset) == summary['num_val']
    for info in dataset:
        folder = osp.basename(osp.dirname(info['img_path']))
        assert info['gt_label'] == int(folder)

    # Same parameters: skipped; other parameters: re-exported.
    assert export_digits(root)['skipped']
    with pytest.raises(FileExistsError, match='size: 32 -> 16'):
        export_digits(root, size=16)  # other parameters: refused
    smaller = export_digits(root, size=16, force=True)
    assert not smaller['skipped'] and smaller['size'] == 16
    assert cv2.imread(path).shape == (16, 16, 3)
    # A folder that is not an export is not overwritten without force.
    os.makedirs(str(tmp_path / 'taken' / 'train' / 'x'))
    with pytest.raises(FileExistsError):
        export_digits(str(tmp_path / 'taken'))


def test_export_digits_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        'export_digits',
        osp.join(REPO, 'tools', 'dataset_converters', 'export_digits.py'),
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    root = str(tmp_path / 'digits')
    summary = cli.main([root, '--size', '8', '--val-fraction', '0.5'])
    assert summary['size'] == 8
    assert abs(summary['num_val'] - 1797 / 2) <= 10
    assert '"num_train"' in capsys.readouterr().out
    # At size 8 the pixels are the original values, scaled to 0..255.
    images, labels = load_digits_arrays()
    index = int(split_digits(labels, 0.5, 0)['train'][0])
    path = osp.join(root, 'train', str(labels[index]), f'{index:04d}.png')
    expected = np.round(images[index] * 255 / 16).astype(np.uint8)
    assert np.array_equal(cv2.imread(path)[..., 2], expected)


def test_digits_configs_share_the_recipe():
    """m-RevNet and ResNet digits configs differ in the backbone only."""
    mrev = Config.fromfile(osp.join(DIGITS, 'mrevnetv1c18_1xb64-digits.py'))
    base = Config.fromfile(osp.join(DIGITS, 'resnetv1c18_1xb64-digits.py'))
    assert base.model.backbone.type == 'ResNetV1c'
    assert mrev.model.backbone.type == 'MRevNetV1c'
    assert set(mrev.model.backbone) - {'type'} <= MREVNET_ARGS
    a, b = mrev.to_dict(), base.to_dict()
    a['model'].pop('backbone'), b['model'].pop('backbone')
    for extra in ('custom_imports', 'mrevnet_v1c', 'runner_type'):
        a.pop(extra, None)
    assert a == b
    assert mrev.runner_type == 'MRevNetRunner'
    for cfg in (mrev, base):
        model = _build_classifier(cfg.model)
        model.eval()
        with torch.no_grad():
            assert model(torch.rand(2, 3, 32, 32), mode='tensor').shape == (
                2,
                10,
            )
