"""The training-set check: each bad data set gets a message naming it."""

import glob
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from tools.cli.data_check import DataCheckError, check_segmentation_data
from tools.dataset_converters.generators.synthetic import generate_cityscapes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(
    REPO,
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py',
)


def _cfg(data_root):
    cfg = Config.fromfile(CONFIG)
    cfg.train_dataloader.dataset.data_root = str(data_root)
    return cfg


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / 'cityscapes'
    generate_cityscapes(str(root), num_train=3, num_val=1, size=(32, 64))
    return root


def _labels(root):
    return sorted(
        glob.glob(str(root / 'gtFine' / 'train' / '*' / '*labelTrainIds.png'))
    )


def test_a_good_set_passes(data_root):
    assert check_segmentation_data(_cfg(data_root)) == 3


def test_empty_set_names_the_folder(tmp_path):
    root = tmp_path / 'empty'
    (root / 'leftImg8bit' / 'train').mkdir(parents=True)
    with pytest.raises(DataCheckError, match='training set is empty') as e:
        check_segmentation_data(_cfg(root))
    assert osp.join(str(root), 'leftImg8bit/train') in str(e.value)


def test_missing_label_file_is_named(data_root):
    missing = _labels(data_root)[1]
    os.remove(missing)
    with pytest.raises(DataCheckError, match='is missing') as e:
        check_segmentation_data(_cfg(data_root))
    assert missing in str(e.value)


def test_label_value_out_of_range_is_named(data_root):
    path = _labels(data_root)[0]
    label = np.asarray(Image.open(path)).copy()
    label[0, 0] = 77
    Image.fromarray(label).save(path)
    with pytest.raises(DataCheckError, match='value 77') as e:
        check_segmentation_data(_cfg(data_root))
    assert path in str(e.value) and '19 classes' in str(e.value)


@pytest.mark.slow
def test_train_tool_stops_before_training(data_root, tmp_path):
    path = _labels(data_root)[2]
    label = np.asarray(Image.open(path)).copy()
    label[1, 1] = 40
    Image.fromarray(label).save(path)
    result = subprocess.run(
        [
            sys.executable,
            'tools/train.py',
            CONFIG,
            '--work-dir',
            str(tmp_path / 'work'),
            '--cfg-options',
            f'train_dataloader.dataset.data_root={data_root}',
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert 'value 40' in result.stderr and path in result.stderr
    assert '--skip-data-check' in result.stderr
    assert 'Iter(train)' not in result.stdout + result.stderr
