"""``init_cfg=dict(type='Pretrained')`` on an MRevNet is strict."""

import pytest
import torch

from mmrevnet.models import MRevNetV1c
from mmrevnet.models.utils.weight_loading import (
    CheckpointMismatchError,
    split_pretrained_strict,
)

NARROW = dict(stem_channels=8, base_channels=8)


def _backbone(checkpoint=None, depth=18, **pretrained):
    init_cfg = None
    if checkpoint is not None:
        init_cfg = dict(type='Pretrained', checkpoint=str(checkpoint))
        init_cfg.update(pretrained)
    return MRevNetV1c(depth=depth, init_cfg=init_cfg, **NARROW)


def _save(tmp_path, name, state_dict):
    path = tmp_path / f'{name}.pth'
    torch.save({'state_dict': state_dict}, path)
    return path


@pytest.fixture(scope='module')
def weights():
    torch.manual_seed(0)
    return _backbone().state_dict()


def test_fitting_weights_load(tmp_path, weights):
    model = _backbone(_save(tmp_path, 'fit', weights))
    model.init_weights()
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize(
    'case, match',
    [
        ('no_matching_key', r'\(no key of the checkpoint matches\)'),
        ('missing_stem', r'missing keys:\n    stem\.0\.weight'),
        ('shape_mismatch', r'size-mismatched keys:\n    layer1\.0\.conv1'),
        ('deeper_network', r'unexpected keys:\n    layer1\.2\.'),
    ],
)
def test_misfitting_weights_raise(tmp_path, weights, case, match):
    if case == 'no_matching_key':
        state = {'head.fc.weight': torch.ones(2)}
    elif case == 'missing_stem':
        state = {k: v for k, v in weights.items() if not k.startswith('stem')}
    elif case == 'shape_mismatch':
        state = dict(weights)
        state['layer1.0.conv1.weight'] = torch.ones(8, 8, 1, 1)
    else:
        state = _backbone(depth=34).state_dict()
    model = _backbone(_save(tmp_path, case, state))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=match) as info:
        model.init_weights()
    assert 'strict=False' in str(info.value)
    assert case in str(info.value)  # the file is named
    if case == 'no_matching_key':
        # Nothing was loaded from a file that matches nothing.
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key


def test_strict_false_keeps_mmengine_behaviour(tmp_path, weights):
    state = dict(weights)
    state['head.fc.weight'] = torch.ones(2)
    del state['layer4.1.conv2.weight']
    model = _backbone(_save(tmp_path, 'partial', state), strict=False)
    assert model.init_cfg == dict(
        type='Pretrained', checkpoint=str(tmp_path / 'partial.pth')
    )
    model.init_weights()
    loaded = model.state_dict()
    assert torch.equal(loaded['stem.0.weight'], weights['stem.0.weight'])


def test_keys_outside_the_backbone_are_left_to_the_log(tmp_path, weights):
    """A classifier's head next to the backbone's keys is no misfit."""
    state = dict(weights)
    state['fc.weight'] = torch.ones(10, 64)
    _backbone(_save(tmp_path, 'classifier', state)).init_weights()


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match='must be a bool'):
        split_pretrained_strict(
            dict(type='Pretrained', checkpoint='a.pth', strict='no')
        )
    cfgs, strict = split_pretrained_strict(
        [dict(type='Kaiming'), dict(type='Pretrained', checkpoint='a')]
    )
    assert strict is True and cfgs[1] == dict(
        type='Pretrained', checkpoint='a'
    )


def test_forced_full_pickle_is_refused(tmp_path, weights, monkeypatch):
    from mmrevnet.engine import UntrustedCheckpointError

    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    model = _backbone(_save(tmp_path, 'fit', weights), strict=False)
    with pytest.raises(UntrustedCheckpointError, match='FORCE_NO_WEIGHTS'):
        model.init_weights()
