"""``tools/demo/image_demo.py`` on a checkpoint of the e2e training."""

import glob
import importlib.util
import os.path as osp

import cv2
import pytest

from .helpers import REPO, cli_options, run_tool

pytestmark = pytest.mark.slow

SCRIPT = osp.join(REPO, 'tools', 'demo', 'image_demo.py')


def _val_image(data_root):
    images = sorted(
        glob.glob(
            osp.join(data_root, 'leftImg8bit', 'val', '*', '*_leftImg8bit.png')
        )
    )
    assert images
    return images[0]


def _load_script():
    spec = importlib.util.spec_from_file_location('image_demo', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_demo_script(trained_run, data_roots, tmp_path):
    """As a user runs it: the config the Runner dumped into the work dir."""
    run = trained_run('pspnet', 'cityscapes')
    image = _val_image(data_roots['cityscapes'])
    out_file = tmp_path / 'vis' / 'overlay.png'
    output = run_tool(
        [
            SCRIPT,
            image,
            run['dumped_config'],
            run['checkpoint'],
            '--out-file',
            str(out_file),
            '--device',
            'cpu',
            '--opacity',
            '0.5',
            '--with-labels',
        ]
    )
    assert str(out_file) in output
    painted = cv2.imread(str(out_file))
    assert painted is not None, output[-3000:]
    assert painted.shape == cv2.imread(image).shape


def test_image_demo_shipped_config_with_cfg_options(
    trained_run, data_roots, tmp_path, monkeypatch
):
    """The shipped config plus the training overrides (``--cfg-options``)."""
    run = trained_run('pspnet', 'cityscapes')
    image = _val_image(data_roots['cityscapes'])
    monkeypatch.chdir(tmp_path)
    demo = _load_script()
    out_file = demo.main(
        [
            image,
            run['config'],
            run['checkpoint'],
            '--device',
            'cpu',
            '--opacity',
            '1',
            '--cfg-options',
            *cli_options(run['options']),
        ]
    )
    stem = osp.splitext(osp.basename(image))[0]
    assert out_file == f'{stem}_result.png'
    painted = cv2.imread(str(tmp_path / out_file))
    assert painted is not None
    assert painted.shape == cv2.imread(image).shape


def test_image_demo_rejects_bad_opacity(capsys):
    demo = _load_script()
    with pytest.raises(SystemExit):
        demo.parse_args(['a.png', 'c.py', 'k.pth', '--opacity', '0'])
    assert '--opacity' in capsys.readouterr().err
