"""ResNet checkpoints of mmseg, mmpretrain and torchvision into MRevNet."""

import importlib.util
import os.path as osp
from collections import OrderedDict

import pytest
import torch
import torchvision
from mmengine.runner import load_checkpoint
from mmpretrain.models import ResNet as PretrainResNet
from mmpretrain.models import ResNetV1c as PretrainResNetV1c
from mmpretrain.models import ResNetV1d as PretrainResNetV1d
from mmseg.models.backbones import ResNetV1c as SegResNetV1c
from model_helpers import randomize_norms

from mmrevnet.models import MRevNet, MRevNetV1c, MRevNetV1d
from tools.model_converters.convert import (
    ConversionError,
    convert_checkpoint,
    convert_state_dict,
    detect_source,
    strip_prefixes,
)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TARGETS = {'plain': MRevNet, 'v1c': MRevNetV1c, 'v1d': MRevNetV1d}


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics and affine parameters (not 1/0 defaults)."""
    return randomize_norms(model, seed, count=int(seed) + 7)


def _mmpretrain_key(key: str) -> str:
    """mmpretrain's ConvModule stem key -> mmseg's flat stem key."""
    parts = key.split('.')
    if parts[0] == 'stem' and parts[2] in ('conv', 'bn'):
        index = 3 * int(parts[1]) + (parts[2] == 'bn')
        return '.'.join(['stem', str(index)] + parts[3:])
    return key


def _load_strict(variant: str, depth: int, path: str) -> torch.nn.Module:
    """Build the target and load a converted file with strict=True."""
    model = TARGETS[variant](depth=depth)
    load_checkpoint(model, path, map_location='cpu', strict=True)
    return model


def _assert_tensors_equal(model, source: dict, key_map=lambda k: k):
    """Every source tensor equals the target tensor it was mapped to."""
    target = model.state_dict()
    assert len(source) == len(target)
    for key, value in source.items():
        assert torch.equal(target[key_map(key)], value), key


@pytest.mark.parametrize('depth', (18, 50))
def test_mmseg_resnetv1c(tmp_path, depth):
    """A bare mmseg state dict: keys are already those of MRevNetV1c."""
    source = _randomize(SegResNetV1c(depth=depth), depth).state_dict()
    src = str(tmp_path / 'mmseg.pth')
    torch.save(source, src)
    result = convert_checkpoint(src, str(tmp_path / 'out.pth'), depth=depth)
    assert result.source == 'mmseg'
    assert result.complete and not result.renamed and not result.dropped_keys
    model = _load_strict('v1c', depth, str(tmp_path / 'out.pth'))
    _assert_tensors_equal(model, source)


def test_mmseg_segmentor_checkpoint(tmp_path):
    """A whole-segmentor mmengine checkpoint: 'backbone.' is stripped."""
    source = _randomize(SegResNetV1c(depth=18), 1).state_dict()
    state_dict = OrderedDict(('backbone.' + k, v) for k, v in source.items())
    state_dict['decode_head.conv_seg.weight'] = torch.randn(19, 512, 1, 1)
    state_dict['auxiliary_head.conv_seg.bias'] = torch.randn(19)
    src = str(tmp_path / 'segmentor.pth')
    torch.save(dict(meta=dict(epoch=1), state_dict=state_dict), src)
    result = convert_checkpoint(src, str(tmp_path / 'out.pth'), depth=18)
    assert result.source == 'mmseg'
    assert result.complete
    assert result.dropped_keys == [
        'decode_head.conv_seg.weight',
        'auxiliary_head.conv_seg.bias',
    ]
    model = _load_strict('v1c', 18, str(tmp_path / 'out.pth'))
    _assert_tensors_equal(model, source)


def test_mmpretrain_resnetv1c50(tmp_path):
    """A bare mmpretrain ResNetV1c: the ConvModule stem keys are renamed."""
    source = _randomize(PretrainResNetV1c(depth=50), 2).state_dict()
    src = str(tmp_path / 'mmpretrain.pth')
    torch.save(source, src)
    result = convert_checkpoint(src, str(tmp_path / 'out.pth'), depth=50)
    assert result.source == 'mmpretrain'
    assert result.complete
    assert result.renamed['stem.0.conv.weight'] == 'stem.0.weight'
    assert result.renamed['stem.2.bn.running_var'] == 'stem.7.running_var'
    assert len(result.renamed) == 3 * 6  # 3 x (conv weight + 5 BN entries)
    model = _load_strict('v1c', 50, str(tmp_path / 'out.pth'))
    _assert_tensors_equal(model, source, _mmpretrain_key)


def test_mmpretrain_resnet18_classifier(tmp_path):
    """An mmpretrain ImageClassifier checkpoint of a plain ResNet-18."""
    source = _randomize(PretrainResNet(depth=18), 3).state_dict()
    state_dict = OrderedDict(('backbone.' + k, v) for k, v in source.items())
    state_dict['head.fc.weight'] = torch.randn(1000, 512)
    state_dict['head.fc.bias'] = torch.randn(1000)
    src = str(tmp_path / 'classifier.pth')
    torch.save(dict(state_dict=state_dict, meta=dict()), src)
    dst = str(tmp_path / 'out.pth')
    result = convert_checkpoint(src, dst, depth=18, variant='plain')
    assert result.source == 'mmpretrain'
    assert result.complete
    assert result.dropped_keys == ['head.fc.weight', 'head.fc.bias']
    model = _load_strict('plain', 18, dst)
    _assert_tensors_equal(model, source)


def test_mmpretrain_resnetv1d_same_output():
    """mmpretrain's V1d leaves out the identity pool of layer1's downsample.

    The conversion shifts ``layer1.0.downsample.{0,1}`` to ``{1,2}``; with
    ``gamma=0`` and ``residual_fn='block'`` the MRevNetV1d computes the
    same function as mmpretrain's ResNetV1d.
    """
    torch.manual_seed(0)
    resnet = _randomize(PretrainResNetV1d(depth=50, out_indices=(3,)), 4)
    result = convert_state_dict(resnet.state_dict(), 50, variant='v1d')
    assert result.source == 'mmpretrain' and result.complete
    assert result.renamed['layer1.0.downsample.0.weight'] == (
        'layer1.0.downsample.1.weight'
    )
    assert 'layer2.0.downsample.1.weight' not in result.renamed
    mrevnet = MRevNetV1d(
        depth=50,
        gamma=0.0,
        memory_saving=False,
        residual_fn='block',
        out_indices=(3,),
    )
    mrevnet.load_state_dict(result.state_dict, strict=True)
    x = torch.randn(2, 3, 64, 64)
    # Not chained: mmpretrain's ResNet.train() returns None.
    resnet.eval()
    mrevnet.eval()
    with torch.no_grad():
        expected = resnet(x)[0]
        actual = mrevnet(x)[0]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('depth', (18, 50))
def test_torchvision_resnet(tmp_path, depth):
    """torchvision's keys fit the plain MRevNet; ``fc`` is dropped."""
    net = getattr(torchvision.models, f'resnet{depth}')(weights=None)
    source = _randomize(net, depth).state_dict()
    src = str(tmp_path / 'torchvision.pth')
    torch.save(source, src)
    dst = str(tmp_path / 'out.pth')
    result = convert_checkpoint(src, dst, depth=depth, variant='plain')
    assert result.source == 'torchvision'
    assert result.complete and not result.renamed
    assert result.dropped_keys == ['fc.weight', 'fc.bias']
    model = _load_strict('plain', depth, dst)
    del source['fc.weight'], source['fc.bias']
    _assert_tensors_equal(model, source)
    meta = torch.load(dst, map_location='cpu', weights_only=True)['meta']
    assert meta['source'] == 'torchvision'
    assert meta['target'] == dict(type='MRevNet', depth=depth, style='pytorch')
    assert meta['source_checkpoint'] == src


def test_torchvision_resnet50_same_output():
    """Converted torchvision ResNet-50 = the ResNet at gamma=0 (eval mode).

    ``gamma=0`` with ``residual_fn='block'`` turns each momentum block back
    into the ResNet block, so the converted MRevNet must reproduce
    torchvision's features (before the average pool).
    """
    torch.manual_seed(0)
    net = _randomize(torchvision.models.resnet50(weights=None), 5).eval()
    result = convert_state_dict(net.state_dict(), 50, variant='plain')
    mrevnet = MRevNet(
        depth=50,
        gamma=0.0,
        memory_saving=False,
        residual_fn='block',
        deep_stem=False,
        out_indices=(3,),
    ).eval()
    mrevnet.load_state_dict(result.state_dict, strict=True)
    features = torch.nn.Sequential(*list(net.children())[:-2])
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        expected = features(x)
        actual = mrevnet(x)[0]
    assert actual.shape == expected.shape == (2, 2048, 3, 3)
    scale = expected.abs().max()
    assert (actual - expected).abs().max() <= 1e-4 * max(1.0, scale)


def test_prefixes_and_detection():
    """'module.' (DDP) and 'backbone.' prefixes; what each layout says."""
    source = SegResNetV1c(depth=18).state_dict()
    wrapped = OrderedDict(
        ('module.backbone.' + k, v) for k, v in source.items()
    )
    wrapped['module.decode_head.conv_seg.weight'] = torch.zeros(1)
    backbone, dropped, whole = strip_prefixes(wrapped)
    assert whole and list(backbone) == list(source)
    assert dropped == ['decode_head.conv_seg.weight']
    assert detect_source(backbone, dropped) == 'mmseg'
    result = convert_state_dict(wrapped, 18)
    assert result.complete
    tv = torchvision.models.resnet18(weights=None).state_dict()
    assert detect_source(tv) == 'torchvision'
    tv.pop('fc.weight'), tv.pop('fc.bias')
    # Without fc, torchvision's keys are mmseg's: the renaming is the same.
    assert detect_source(tv) == 'mmseg'
    assert detect_source(PretrainResNetV1c(depth=18).state_dict()) == (
        'mmpretrain'
    )


def test_missing_and_unexpected_keys_are_reported():
    """Depth 18 into depth 34: the extra blocks are missing."""
    source = SegResNetV1c(depth=18).state_dict()
    result = convert_state_dict(source, depth=34)
    assert not result.complete and not result.unexpected_keys
    assert 'layer1.2.conv1.weight' in result.missing_keys
    assert 'layer3.5.bn2.running_var' in result.missing_keys
    assert not any(k.startswith('layer1.1.') for k in result.missing_keys)
    assert 'missing keys' in result.summary()
    with pytest.raises(ConversionError, match='layer1.2.conv1.weight'):
        convert_state_dict(source, depth=34, strict=True)
    # torchvision (7x7 stem) into V1c: the stems do not correspond.
    tv = torchvision.models.resnet18(weights=None).state_dict()
    result = convert_state_dict(tv, depth=18, variant='v1c')
    assert 'stem.0.weight' in result.missing_keys
    assert 'conv1.weight' in result.unexpected_keys
    assert 'conv1.weight' not in result.state_dict


def test_shape_mismatch_is_refused():
    """A tensor that does not fit is refused, naming the key and shapes."""
    source = SegResNetV1c(depth=18).state_dict()
    source['layer2.0.conv1.weight'] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(ConversionError) as info:
        convert_state_dict(source, depth=18)
    message = str(info.value)
    assert 'layer2.0.conv1.weight' in message
    assert '(128, 64, 1, 1)' in message and '(128, 64, 3, 3)' in message
    # Basic blocks into a bottleneck network: refused as well.
    with pytest.raises(ConversionError, match='layer1.0.conv1.weight'):
        convert_state_dict(SegResNetV1c(depth=18).state_dict(), depth=50)


def test_num_batches_tracked_filled():
    """Checkpoints older than PyTorch 0.4.1 lack ``num_batches_tracked``."""
    source = torchvision.models.resnet18(weights=None).state_dict()
    old = {k: v for k, v in source.items() if 'num_batches' not in k}
    result = convert_state_dict(old, depth=18, variant='plain')
    assert result.complete
    assert 'bn1.num_batches_tracked' in result.filled_keys
    assert len(result.filled_keys) == sum('num_batches' in k for k in source)


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        'resnet_to_mrevnet',
        osp.join(REPO, 'tools', 'model_converters', 'resnet_to_mrevnet.py'),
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_cli_and_pretrained_init(tmp_path, capsys):
    """The CLI writes a file that ``init_cfg=Pretrained`` loads."""
    cli = _load_cli()
    source = _randomize(PretrainResNetV1c(depth=18), 6).state_dict()
    src = str(tmp_path / 'src.pth')
    torch.save(source, src)
    dst = str(tmp_path / 'dst.pth')
    result = cli.main([src, dst, '--depth', '18', '--variant', 'v1c'])
    assert result.source == 'mmpretrain' and result.complete
    assert 'source: mmpretrain' in capsys.readouterr().out
    model = MRevNetV1c(
        depth=18, init_cfg=dict(type='Pretrained', checkpoint=dst)
    )
    model.init_weights()
    _assert_tensors_equal(model, source, _mmpretrain_key)

    # --strict refuses an incomplete conversion and writes nothing.
    refused = str(tmp_path / 'refused.pth')
    with pytest.raises(SystemExit, match='strict'):
        cli.main([src, refused, '--depth', '34', '--strict'])
    assert not osp.exists(refused)
    # A shape mismatch is refused without --strict too.
    with pytest.raises(SystemExit, match='layer1.0.conv1.weight'):
        cli.main([src, refused, '--depth', '50'])
    assert not osp.exists(refused)


def test_cli_refuses_to_overwrite_without_force(tmp_path):
    cli = _load_cli()
    src = str(tmp_path / 'src.pth')
    torch.save(_randomize(PretrainResNetV1c(depth=18), 6).state_dict(), src)
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'keep me')
    args = [src, str(dst), '--depth', '18', '--variant', 'v1c']
    with pytest.raises(SystemExit, match='exists; refusing to overwrite'):
        cli.main(args)
    assert dst.read_bytes() == b'keep me'
    cli.main(args + ['--force'])
    assert torch.load(dst, weights_only=True)['meta']


@pytest.mark.parametrize(
    'name',
    ['history_buffer_reduce_amplified', 'parameter_forged_class'],
)
def test_cli_refuses_hostile_file_in_one_line(tmp_path, name):
    """The converter reports an untrusted file as one line, no traceback."""
    spec = importlib.util.spec_from_file_location(
        'crafted_checkpoints',
        osp.join(REPO, 'tests', 'test_engine', 'crafted_checkpoints.py'),
    )
    crafted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(crafted)
    cli = _load_cli()
    src = str(tmp_path / f'{name}.pth')
    crafted.craft(name, src, str(tmp_path / 'payload_ran'))
    with pytest.raises(SystemExit) as info:
        cli.main([src, str(tmp_path / 'out.pth')])
    message = str(info.value.code)
    assert message.startswith('error: Refused to load the checkpoint')
    assert '\n' not in message
    assert not osp.exists(tmp_path / 'out.pth')
