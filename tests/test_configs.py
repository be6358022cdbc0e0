"""Every shipped config loads, builds, and its heads fit its backbone.

Configs are discovered under ``configs/`` (``_base_`` excluded), so a new
config is tested without touching this file. Segmentation configs
(``default_scope='mmseg'``) are built with mmseg's registry, classification
configs (``default_scope='mmpretrain'``, e.g. ``configs/mrevnet/``) with
mmpretrain's. Before building, ImageNet weights are switched off and SyncBN
is replaced by BN (no process group on the CPU); then one eval-mode forward
on a 1x3x64x64 input checks that every head's ``in_channels`` match the
channels of the features it reads.
"""

import ast
import copy
import functools
import glob
import os
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from torch import nn

import mmrevnet  # noqa: F401  (compat shims before mmseg)
from mmrevnet.models.backbones.mrevnet import MRevNet

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG_ROOT = osp.join(REPO, 'configs')
#: Config folders of the segmentation families (one mmseg config each).
SEG_FAMILIES = ('pspnet', 'deeplabv3', 'upernet')
#: Backbone settings that the thin configs add to mmseg's backbone
#: (``configs/_base_/models/mrevnet_v1c.py``).
MREVNET_SETTINGS = dict(gamma=0.9, memory_saving=True, residual_fn='block')
MIN_SEGMENTATION_CONFIGS = 12
MIN_DEMO_CONFIGS = 2


def discover_configs():
    """Config files under ``configs/`` relative to the repo, sorted."""
    paths = glob.glob(osp.join(CONFIG_ROOT, '**', '*.py'), recursive=True)
    found = []
    for path in sorted(paths):
        rel = osp.relpath(path, CONFIG_ROOT)
        if '_base_' in rel.split(os.sep):
            continue
        found.append(osp.relpath(path, REPO).replace(os.sep, '/'))
    return found


CONFIGS = discover_configs()


@functools.lru_cache(maxsize=None)
def _load(path: str) -> Config:
    return Config.fromfile(osp.join(REPO, path))


def load(path: str) -> Config:
    """A private copy of the parsed config (parsing is cached)."""
    return copy.deepcopy(_load(path))


def scope_of(path: str) -> str:
    return _load(path).get('default_scope', 'mmseg')


def family_of(path: str) -> str:
    return path.split('/')[1]


def is_mrevnet(path: str) -> bool:
    """m-RevNet configs carry it in their name; the others are baselines."""
    return 'mrevnet' in osp.basename(path)


def _syncbn_to_bn(cfg) -> None:
    """Replace every ``SyncBN`` norm config by ``BN`` (in place)."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            _syncbn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            _syncbn_to_bn(value)


def _no_pretrained(model_cfg) -> None:
    """Switch off every ImageNet checkpoint of a model config."""
    if 'pretrained' in model_cfg:
        model_cfg.pretrained = None
    backbone = model_cfg.get('backbone')
    if backbone is not None:
        backbone.init_cfg = None
        if 'pretrained' in backbone:
            backbone.pretrained = None


def _strip_scope(value):
    if isinstance(value, dict):
        return {k: _strip_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip_scope(v) for v in value)
    return value


def _mmseg_base(path: str):
    """The ``mmseg::`` config that a thin config inherits, or None."""
    with open(osp.join(REPO, path)) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == '_base_' for t in node.targets
        ):
            bases = ast.literal_eval(node.value)
            bases = [bases] if isinstance(bases, str) else bases
            mmseg = [b for b in bases if b.startswith('mmseg::')]
            return mmseg[0] if mmseg else None
    return None


def build_model(path: str):
    """Build the config's model on the CPU, in eval mode."""
    cfg = load(path)
    scope = scope_of(path)
    _no_pretrained(cfg.model)
    _syncbn_to_bn(cfg.model)
    init_default_scope(scope)
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules()), (
        'SyncBN left after replacing it by BN'
    )
    return cfg, model.eval()


def test_configs_are_found():
    """Discovery finds the shipped configs (fails if the glob is broken)."""
    assert CONFIGS, f'no configs found under {CONFIG_ROOT}'
    demo = [p for p in CONFIGS if family_of(p) == 'demo']
    others = [p for p in CONFIGS if family_of(p) != 'demo']
    segmentation = [p for p in others if scope_of(p) == 'mmseg']
    classification = [p for p in others if scope_of(p) == 'mmpretrain']
    assert len(segmentation) >= MIN_SEGMENTATION_CONFIGS, segmentation
    assert len(demo) >= MIN_DEMO_CONFIGS, demo
    unknown = set(others) - set(segmentation) - set(classification)
    assert not unknown, {p: scope_of(p) for p in unknown}
    # Every family has both depths on both data sets.
    for family in SEG_FAMILIES:
        names = [
            osp.basename(p) for p in segmentation if family_of(p) == family
        ]
        for depth in (50, 101):
            for data in ('cityscapes', 'ade20k'):
                assert any(
                    f'mrevnet{depth}' in n and data in n for n in names
                ), (family, depth, data, names)


@pytest.mark.parametrize('path', CONFIGS)
def test_config_builds_and_heads_match(path):
    cfg, model = build_model(path)
    backbone_type = cfg.model.backbone.type
    if is_mrevnet(path):
        assert backbone_type.startswith('MRevNet'), backbone_type
        assert isinstance(model.backbone, MRevNet)
    else:
        assert not isinstance(model.backbone, MRevNet), backbone_type

    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        if scope_of(path) == 'mmpretrain':
            _check_classifier(model, x)
        else:
            _check_segmentor(cfg, model, x)


def _check_classifier(model, x):
    feats = model.backbone(x)
    head = model.head
    assert head.in_channels == feats[-1].shape[1], (
        f'head.in_channels={head.in_channels}, backbone gives '
        f'{feats[-1].shape[1]}'
    )
    logits = model(x, mode='tensor')
    assert logits.shape == (1, head.num_classes)
    assert torch.isfinite(logits).all()


def _heads(model):
    heads = [('decode_head', model.decode_head)]
    if model.with_auxiliary_head:
        aux = model.auxiliary_head
        if isinstance(aux, nn.ModuleList):
            heads += [(f'auxiliary_head.{i}', h) for i, h in enumerate(aux)]
        else:
            heads.append(('auxiliary_head', aux))
    return heads


def _check_segmentor(cfg, model, x):
    from mmseg.registry import DATASETS

    feats = model.extract_feat(x)
    channels = [f.shape[1] for f in feats]
    num_classes = len(
        DATASETS.get(cfg.train_dataloader.dataset.type).METAINFO['classes']
    )
    for name, head in _heads(model):
        if isinstance(head.in_index, (list, tuple)):
            expected = [channels[i] for i in head.in_index]
            if head.input_transform == 'resize_concat':
                expected = sum(expected)
            got = head.in_channels
            got = list(got) if isinstance(got, (list, tuple)) else got
        else:
            expected, got = channels[head.in_index], head.in_channels
        assert got == expected, (
            f'{name}.in_channels={got}, but the backbone gives {expected} '
            f'at in_index={head.in_index} (all outputs: {channels})'
        )
        assert head.num_classes == num_classes, (name, head.num_classes)
        out = head(feats)
        assert out.shape[:2] == (1, num_classes), (name, out.shape)
        assert torch.isfinite(out).all(), name


THIN_CONFIGS = [p for p in CONFIGS if family_of(p) in SEG_FAMILIES]


@pytest.mark.parametrize('path', THIN_CONFIGS)
def test_config_is_mmseg_config_with_backbone_swapped(path):
    """Everything but the backbone type (+ m-RevNet settings) is mmseg's."""
    base = _mmseg_base(path)
    assert base is not None, f'{path} does not inherit an mmseg:: config'
    ours = _strip_scope(_load(path).to_dict())
    theirs = _strip_scope(get_config(base).to_dict())
    assert theirs['model']['backbone']['type'] == 'ResNetV1c'
    backbone = ours['model'].pop('backbone')
    their_backbone = theirs['model'].pop('backbone')
    assert backbone.pop('type') == 'MRevNetV1c'
    their_backbone.pop('type')
    for key, value in MREVNET_SETTINGS.items():
        assert backbone.pop(key) == value, key
    assert backbone == their_backbone
    assert ours['model'] == theirs['model']
    extra = set(ours) - set(theirs)
    assert extra <= {'custom_imports', 'mrevnet_v1c', 'runner_type'}, extra
    for key in theirs:
        assert ours[key] == theirs[key], key
    assert ours['custom_imports']['imports'] == ['mmrevnet']
    # mmengine's Runner with scoped safe checkpoint loading.
    assert ours['runner_type'] == 'MRevNetRunner'


@pytest.mark.parametrize('family', SEG_FAMILIES)
def test_family_readme_lists_every_config(family):
    readme = osp.join(CONFIG_ROOT, family, 'README.md')
    assert osp.isfile(readme), readme
    with open(readme) as f:
        text = f.read()
    configs = [p for p in CONFIGS if family_of(p) == family]
    assert configs
    for path in configs:
        name = osp.basename(path)
        assert f'({name})' in text or f'(./{name})' in text, (
            f'{readme} does not link {name}'
        )
