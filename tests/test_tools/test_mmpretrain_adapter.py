"""The adapter that runs mmpretrain-style ResNet tests against MRevNet."""

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TOOL = os.path.join(
    ROOT, 'tools', 'analysis_tools', 'mmpretrain_resnet_tests.py'
)

# Written here in mmpretrain's style (its file is not shipped with it).
TESTS = textwrap.dedent(
    """
    import pytest
    import torch
    from mmpretrain.models.backbones import ResNet, ResNetV1c


    def test_resnet_rebound_with_mmpretrain_arguments():
        model = ResNet(18, drop_path_rate=0.1, expansion=1)
        assert type(model).__name__ == 'MRevNet'
        model.init_weights()
        model.train()
        feat = model(torch.randn(1, 3, 64, 64))
        assert len(feat) == 1 and feat[0].shape == (1, 512, 2, 2)
        assert type(ResNetV1c(depth=18)).__name__ == 'MRevNetV1c'


    def test_resnet_bad_stages():
        with pytest.raises(AssertionError):
            ResNet(18, num_stages=0)


    def test_blocks_not_selected():
        raise RuntimeError('only test_resnet* tests run')
    """
)


def _run(tmp_path, *flags):
    path = tmp_path / 'test_resnet.py'
    path.write_text(TESTS)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, TOOL, str(path), *flags],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )


def test_adapter_rebinds_backbones_and_maps_errors(tmp_path):
    result = _run(tmp_path, '--map-errors')
    assert result.returncode == 0, result.stdout + result.stderr
    assert '2 passed, 1 deselected' in result.stdout
    result = _run(tmp_path)
    assert result.returncode == 1
    assert 'ValueError: num_stages must be 1, 2, 3 or 4' in result.stdout
