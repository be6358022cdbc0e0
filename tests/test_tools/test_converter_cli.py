"""``tools/model_converters/resnet_to_mrevnet.py`` as a user runs it."""

import os.path as osp
import subprocess
import sys

import torch
import torchvision
from mmpretrain.models.backbones import ResNetV1d as PretrainResNetV1d
from tool_process import run_tools

from mmrevnet.models import MRevNet, MRevNetV1d
from tools.model_converters.convert import detect_layout

from .helpers import REPO

TOOL = 'tools/model_converters/resnet_to_mrevnet.py'


PRELOAD = ('torch', 'mmrevnet', 'tools.model_converters.convert')


def _convert(*args):
    """``python TOOL *args`` itself (the start-up of the script)."""
    return subprocess.run(
        [sys.executable, TOOL, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_torchvision_gets_the_matching_variant(tmp_path):
    src, dst = tmp_path / 'resnet18.pth', tmp_path / 'mrevnet18.pth'
    torch.save(torchvision.models.resnet18().state_dict(), src)
    refused, partial = tmp_path / 'refused.pth', tmp_path / 'partial.pth'
    # The three command lines as children of the tool server, which forks
    # a run of the tool per line (tests/tool_process.py); the text-file
    # test starts ``python tools/model_converters/resnet_to_mrevnet.py``
    # itself.
    converted, refused_run, partial_run = run_tools(
        [
            [TOOL, src, dst],
            [TOOL, src, refused, '--variant', 'v1c'],
            [TOOL, src, partial, '--variant', 'v1c', '--non-strict'],
        ],
        preload=PRELOAD,
    )
    result = converted
    assert result.returncode == 0, result.stderr
    assert 'target: MRevNet(depth=18)' in result.stdout
    MRevNet(depth=18).load_state_dict(
        torch.load(dst, weights_only=True)['state_dict'], strict=True
    )
    # The wrong target is refused: exit status 1, nothing written.
    result = refused_run
    assert result.returncode == 1
    assert 'stem.0.weight' in result.stderr
    assert '--non-strict' in result.stderr
    assert 'saved' not in result.stdout
    assert not osp.exists(refused)
    # ... unless a partial result is asked for.
    result = partial_run
    assert result.returncode == 0, result.stderr
    assert 'warning: the checkpoint does not fill' in result.stdout
    assert osp.exists(partial)


def test_mmpretrain_v1d_layout_is_detected(tmp_path):
    theirs = PretrainResNetV1d(depth=50).state_dict()
    assert detect_layout(theirs) == ('v1d', 50)
    src, dst = tmp_path / 'v1d.pth', tmp_path / 'mrevnetv1d.pth'
    torch.save({'state_dict': theirs}, src)
    (result,) = run_tools([[TOOL, src, dst]], preload=PRELOAD)
    assert result.returncode == 0, result.stderr
    assert 'target: MRevNetV1d(depth=50)' in result.stdout
    MRevNetV1d(depth=50).load_state_dict(
        torch.load(dst, weights_only=True)['state_dict'], strict=True
    )


def test_text_file_is_not_a_checkpoint(tmp_path):
    src = tmp_path / 'notes.pth'
    src.write_text('hello, this is not a checkpoint\n')
    result = _convert(src, tmp_path / 'out.pth')
    assert result.returncode == 1
    assert 'is not a PyTorch checkpoint' in result.stderr
    assert 'weights_only' not in result.stderr
    assert not osp.exists(tmp_path / 'out.pth')
