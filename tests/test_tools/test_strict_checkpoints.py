"""``tools/test.py`` loads checkpoints strictly unless told otherwise."""

import os.path as osp

import torch
import torchvision
from mmengine.config import Config
from mmengine.registry import init_default_scope
from tool_process import run_tools

from tools.cli.strict_loading import compare_state_dict

from .helpers import cli_options, config_path, tiny_options

HEAD, LAYOUT = 'pspnet', 'cityscapes'


def _segmentor(options):
    from mmseg.registry import MODELS

    cfg = Config.fromfile(config_path(HEAD, LAYOUT))
    cfg.merge_from_dict(options)
    init_default_scope('mmseg')
    return MODELS.build(cfg.model)


def _test_tool(checkpoint, options, tmp_path, *flags):
    """``tools/test.py`` arguments (after ``python``)."""
    return [
        'tools/test.py',
        config_path(HEAD, LAYOUT),
        str(checkpoint),
        '--work-dir',
        str(tmp_path / f'test_{osp.basename(checkpoint)}{"".join(flags)}'),
        *flags,
        '--cfg-options',
        *cli_options(options),
    ]


def test_compare_state_dict_maps_mmpretrain_keys():
    from mmpretrain.models.backbones import ResNetV1c as PretrainResNetV1c

    from mmrevnet.models import MRevNetV1c

    theirs = PretrainResNetV1c(depth=18).state_dict()
    assert compare_state_dict(MRevNetV1c(depth=18), theirs).exact
    report = compare_state_dict(MRevNetV1c(depth=34), theirs)
    assert report.missing and not report.unexpected
    report = compare_state_dict(MRevNetV1c(depth=18, base_channels=32), theirs)
    assert report.mismatched[0].startswith('layer1.0.conv1.weight: checkp')


def test_test_tool_refuses_misfitting_checkpoints(data_roots, tmp_path):
    options = tiny_options(HEAD, LAYOUT, data_roots[LAYOUT])
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': _segmentor(options).state_dict()}, good)
    # A torchvision ResNet-50 file: nothing of the segmentor is in it.
    torchvision_file = tmp_path / 'resnet50-tv.pth'
    torch.save(torchvision.models.resnet50().state_dict(), torchvision_file)
    # A deeper backbone's checkpoint on the depth-18 config.
    deeper = dict(options, **{'model.backbone.depth': 34})
    depth34 = tmp_path / 'depth34.pth'
    torch.save({'state_dict': _segmentor(deeper).state_dict()}, depth34)
    # The four command lines in one process that forks a run of the tool
    # per line (tests/tool_process.py); test_segmentation_e2e.py and
    # test_safe_loading.py start ``python tools/test.py`` itself.
    good_run, torchvision_run, strict_run, non_strict_run = run_tools(
        [
            _test_tool(good, options, tmp_path),
            _test_tool(torchvision_file, options, tmp_path),
            _test_tool(depth34, options, tmp_path),
            _test_tool(depth34, options, tmp_path, '--non-strict'),
        ]
    )

    result = good_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'mIoU: ' in result.stdout + result.stderr

    result = torchvision_run
    assert result.returncode != 0
    assert 'does not fit the model' in result.stderr
    assert 'missing keys:' in result.stderr
    assert 'unexpected keys:' in result.stderr
    assert '--non-strict' in result.stderr
    assert 'mIoU: ' not in result.stdout + result.stderr

    result = strict_run
    assert result.returncode != 0
    assert 'unexpected keys:' in result.stderr
    assert 'backbone.layer1.2.conv1.weight' in result.stderr
    # ... accepted when asked for.
    result = non_strict_run
    assert result.returncode == 0, result.stderr[-3000:]


def test_train_tool_refuses_misfitting_load_from(data_roots, tmp_path):
    options = tiny_options(HEAD, LAYOUT, data_roots[LAYOUT])
    deeper = dict(options, **{'model.backbone.depth': 34})
    depth34 = tmp_path / 'depth34.pth'
    torch.save({'state_dict': _segmentor(deeper).state_dict()}, depth34)
    args = [
        'tools/train.py',
        config_path(HEAD, LAYOUT),
        '--work-dir',
        str(tmp_path / 'train'),
        '--cfg-options',
        *cli_options(dict(options, load_from=str(depth34))),
    ]
    (result,) = run_tools([args])
    assert result.returncode != 0
    assert 'does not fit the model' in result.stderr
    assert '--non-strict' in result.stderr
