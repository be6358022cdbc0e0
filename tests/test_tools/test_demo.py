"""The main job's function: ``tools.demo.segmentation_demo``.

The real demo trains 300 iterations on 200 images of 128x256; here two
iterations on 8 + 4 generated images of 64x128 check that every step runs:
data generation, training, mIoU, overlays and the training curve.
"""

import math
import os.path as osp

import cv2
import numpy as np
import pytest

from tools.demo.logs import read_scalars
from tools.demo.segmentation_demo import run_segmentation_demo

from .helpers import REPO

pytestmark = pytest.mark.slow

TINY = dict(num_train=8, num_val=4, size=(64, 128))


def _check_run(run):
    metrics = run['metrics']
    for key in ('mIoU', 'aAcc', 'mAcc'):
        value = metrics[key]
        assert isinstance(value, (float, np.floating)), (key, type(value))
        assert math.isfinite(value) and 0 <= value <= 100, (key, value)
    assert osp.isfile(run['checkpoint'])


def _check_png(path, shape=None):
    assert osp.isfile(path), path
    image = cv2.imread(path)
    assert image is not None, path
    if shape is not None:
        assert image.shape[:2] == shape, (path, image.shape)


def test_run_segmentation_demo(tmp_path, monkeypatch):
    """With ``compare``, which runs everything the demo without it runs
    (the m-RevNet model) and the ResNet baseline besides."""
    compare = True
    # The demo's config paths are relative to the repository root.
    monkeypatch.chdir(REPO)
    summary = run_segmentation_demo(
        work_dir=str(tmp_path / 'work'),
        data_root=str(tmp_path / 'data'),
        compare=compare,
        max_iters=2,
        num_overlays=2,
        data=TINY,
    )
    assert summary['data']['num_train'] == 8
    assert summary['data']['num_val'] == 4
    names = ['mrevnet34', 'resnetv1c34'] if compare else ['mrevnet34']
    assert sorted(summary['runs']) == sorted(names)
    for name in names:
        _check_run(summary['runs'][name])
        # Each run logs its own training scalars into its own work dir.
        records = read_scalars(summary['runs'][name]['work_dir'])
        assert any('loss' in r for r in records), name
    assert len(summary['overlays']) == 2
    for overlay in summary['overlays']:
        _check_png(overlay, shape=TINY['size'])
    _check_png(summary['curve'])
