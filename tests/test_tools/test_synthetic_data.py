"""Tests of the synthetic data set generators (tools/dataset_converters)."""

import filecmp
import importlib.util
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
from PIL import Image

import mmrevnet  # noqa: F401  (compat shims before mmseg)
from tools.dataset_converters.generators import synthetic
from tools.dataset_converters.generators.manifest import ExistingDatasetError
from tools.dataset_converters.generators.synthetic import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    MANIFEST_NAME,
    generate_ade20k,
    generate_cityscapes,
    generate_imagefolder,
)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CS_SIZE = (32, 64)


def _files(root):
    out = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            if name != MANIFEST_NAME:
                out.append(osp.relpath(osp.join(dirpath, name), root))
    return sorted(out)


def _same_tree(a, b):
    files = _files(a)
    assert files == _files(b)
    _, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    return not mismatch and not errors


def _labels(root, pattern):
    values = set()
    for rel in _files(root):
        if rel.endswith(pattern):
            with Image.open(osp.join(root, rel)) as img:
                label = np.asarray(img)
            assert label.dtype == np.uint8 and label.ndim == 2
            values.update(np.unique(label).tolist())
    return values


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cityscapes'))
    generate_cityscapes(root, num_train=6, num_val=4, size=CS_SIZE, seed=3)
    return root


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('ade'))
    generate_ade20k(
        root, num_train=5, num_val=3, size=(32, 32), num_used_classes=150
    )
    return root


def test_metainfo_matches_mmseg():
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    meta = CityscapesDataset.METAINFO
    assert tuple(meta['classes']) == CITYSCAPES_CLASSES
    assert [tuple(p) for p in meta['palette']] == list(CITYSCAPES_PALETTE)
    assert len(ADE20KDataset.METAINFO['classes']) == (
        synthetic.ADE20K_NUM_CLASSES
    )


def test_cityscapes_layout_and_labels(cityscapes_root):
    root = cityscapes_root
    files = _files(root)
    assert len(files) == 2 * (6 + 4)
    for split, num in (('train', 6), ('val', 4)):
        imgs = [f for f in files if f.startswith(f'leftImg8bit/{split}/')]
        assert len(imgs) == num
        for rel in imgs:
            _, _, city, name = rel.split('/')
            assert name.startswith(city + '_')
            stem = name[: -len('_leftImg8bit.png')]
            assert len(stem.split('_')[1]) == 6
            ann = f'gtFine/{split}/{city}/{stem}_gtFine_labelTrainIds.png'
            assert ann in files
            with Image.open(osp.join(root, rel)) as img:
                assert img.mode == 'RGB' and img.size == CS_SIZE[::-1]
    values = _labels(root, '_labelTrainIds.png')
    assert values <= set(range(19)) | {255}
    assert 255 in values  # the ignore index is exercised
    with open(osp.join(root, MANIFEST_NAME)) as f:
        manifest = json.load(f)
    assert manifest['params']['seed'] == 3
    summary = manifest['summary']
    # Balanced class schedule: 4 val images x 8 classes cover all 19.
    assert min(summary['class_pixels']['val']) > 0
    assert min(summary['class_pixels']['train']) > 0
    assert summary['ignore_pixels']['val'] > 0


def test_determinism(tmp_path, cityscapes_root):
    same = str(tmp_path / 'same')
    other = str(tmp_path / 'other')
    kwargs = dict(num_train=6, num_val=4, size=CS_SIZE)
    generate_cityscapes(same, seed=3, **kwargs)
    generate_cityscapes(other, seed=4, **kwargs)
    assert _same_tree(cityscapes_root, same)
    assert _files(other) == _files(same)
    _, mismatch, _ = filecmp.cmpfiles(same, other, _files(same), shallow=False)
    assert len(mismatch) == len(_files(same))
    # Train and val images differ too.
    a = osp.join(
        same,
        'leftImg8bit',
        'train',
        'aachen',
        'aachen_000000_000019_leftImg8bit.png',
    )
    b = osp.join(
        same,
        'leftImg8bit',
        'val',
        'frankfurt',
        'frankfurt_000000_000019_leftImg8bit.png',
    )
    assert not filecmp.cmp(a, b, shallow=False)


def test_idempotent_and_regenerate(tmp_path):
    root = str(tmp_path / 'cs')
    first = generate_cityscapes(root, num_train=2, num_val=1, size=CS_SIZE)
    assert not first['skipped']
    again = generate_cityscapes(root, num_train=2, num_val=1, size=CS_SIZE)
    assert again['skipped']
    assert again['class_pixels'] == first['class_pixels']
    # Other parameters: refused without force (naming the parameter and
    # force=True), nothing deleted; with force the old files are replaced.
    with pytest.raises(ExistingDatasetError) as refused:
        generate_cityscapes(root, num_train=1, num_val=1, size=CS_SIZE)
    assert 'num_train: 2 -> 1' in str(refused.value)
    assert 'force=True' in str(refused.value)
    assert len(_files(root)) == 6
    changed = generate_cityscapes(
        root, num_train=1, num_val=1, size=CS_SIZE, force=True
    )
    assert not changed['skipped']
    assert len(_files(root)) == 4
    # A missing file: refused as incomplete, regenerated with force.
    os.remove(osp.join(root, _files(root)[0]))
    with pytest.raises(ExistingDatasetError, match='3 of its 4 files'):
        generate_cityscapes(root, num_train=1, num_val=1, size=CS_SIZE)
    assert not generate_cityscapes(
        root, num_train=1, num_val=1, size=CS_SIZE, force=True
    )['skipped']
    # A root with foreign content and no manifest is not overwritten.
    foreign = tmp_path / 'foreign'
    (foreign / 'gtFine').mkdir(parents=True)
    (foreign / 'gtFine' / 'mine.txt').write_text('keep')
    with pytest.raises(FileExistsError):
        generate_cityscapes(str(foreign), num_train=1, num_val=1)
    assert (foreign / 'gtFine' / 'mine.txt').exists()


def _seg_pipeline():
    # LoadAnnotations takes reduce_zero_label from the dataset (True for
    # ADE20KDataset, False for CityscapesDataset).
    from mmcv.transforms import LoadImageFromFile
    from mmseg.datasets.transforms import LoadAnnotations, PackSegInputs

    return [LoadImageFromFile(), LoadAnnotations(), PackSegInputs()]


def test_mmseg_cityscapes_dataset(cityscapes_root):
    from mmseg.datasets import CityscapesDataset

    for split, num in (('train', 6), ('val', 4)):
        dataset = CityscapesDataset(
            data_root=cityscapes_root,
            data_prefix=dict(
                img_path=f'leftImg8bit/{split}', seg_map_path=f'gtFine/{split}'
            ),
            pipeline=_seg_pipeline(),
            serialize_data=False,
        )
        assert len(dataset) == num
        values = set()
        for i in range(len(dataset)):
            sample = dataset[i]
            assert tuple(sample['inputs'].shape) == (3, *CS_SIZE)
            seg = sample['data_samples'].gt_sem_seg.data.numpy()
            assert seg.shape == (1, *CS_SIZE)
            values.update(np.unique(seg).tolist())
        assert values <= set(range(19)) | {255}
        assert 255 in values and len(values - {255}) > 1


def test_ade20k_layout_and_mmseg_dataset(ade_root):
    files = _files(ade_root)
    assert 'images/training/ADE_train_00000001.jpg' in files
    assert 'annotations/training/ADE_train_00000005.png' in files
    assert 'images/validation/ADE_val_00000003.jpg' in files
    assert 'annotations/validation/ADE_val_00000003.png' in files
    assert len(files) == 2 * (5 + 3)
    values = _labels(ade_root, '.png')
    assert values <= set(range(151)) and len(values) > 10

    from mmseg.datasets import ADE20KDataset

    dataset = ADE20KDataset(  # reduce_zero_label=True by default
        data_root=ade_root,
        data_prefix=dict(
            img_path='images/validation', seg_map_path='annotations/validation'
        ),
        pipeline=_seg_pipeline(),
        serialize_data=False,
    )
    assert len(dataset) == 3
    reduced = set()
    for i in range(len(dataset)):
        seg = dataset[i]['data_samples'].gt_sem_seg.data.numpy()
        reduced.update(np.unique(seg).tolist())
    assert reduced <= set(range(150)) | {255}
    assert len(reduced - {255}) > 3


def test_ade20k_used_classes(tmp_path):
    root = str(tmp_path / 'ade')
    summary = generate_ade20k(
        root,
        num_train=3,
        num_val=2,
        size=(32, 32),
        num_used_classes=5,
        num_other=2,
    )
    assert summary['num_used_classes'] == 5
    values = _labels(root, '.png')
    assert values <= set(range(6))
    assert sum(summary['class_pixels']['train'][6:]) == 0
    with pytest.raises(ValueError):
        generate_ade20k(str(tmp_path / 'bad'), num_used_classes=151)


def test_imagefolder_mmpretrain(tmp_path):
    from mmpretrain.datasets import CustomDataset

    root = str(tmp_path / 'cls')
    summary = generate_imagefolder(
        root, num_classes=4, per_class_train=3, per_class_val=2, size=(32, 32)
    )
    assert summary['num_train'] == 12 and summary['num_val'] == 8
    assert osp.isfile(osp.join(root, 'train', 'class_003', '00002.png'))
    for split, num in (('train', 12), ('val', 8)):
        dataset = CustomDataset(data_root=root, data_prefix=split, pipeline=[])
        assert len(dataset) == num
        assert len(dataset.CLASSES) == 4
        assert list(dataset.CLASSES) == summary['classes']
        labels = [dataset.get_data_info(i)['gt_label'] for i in range(num)]
        assert sorted(set(int(x) for x in labels)) == [0, 1, 2, 3]
    again = generate_imagefolder(
        root, num_classes=4, per_class_train=3, per_class_val=2, size=(32, 32)
    )
    assert again['skipped']


def test_classes_are_separable():
    """Nearest class-mean colour (5x5 box filtered) beats chance easily."""
    num_classes = len(CITYSCAPES_CLASSES)
    appearance = synthetic.class_appearance(num_classes, 1019)
    pixels, labels = [], []
    for i in range(6):
        rng = np.random.default_rng([0, i])
        classes = synthetic._class_schedule(num_classes, 8, i, 0, 'val')
        image, label = synthetic.render_scene(
            (64, 128), classes, appearance, rng
        )
        image = cv2.blur(image.astype(np.float32), (5, 5))
        pixels.append(image.reshape(-1, 3))
        labels.append(label.ravel())
    pixels = np.concatenate(pixels)
    labels = np.concatenate(labels)
    keep = labels >= 0
    pixels, labels = pixels[keep], labels[keep]
    means = np.stack([pixels[labels == c].mean(0) for c in np.unique(labels)])
    dist = ((pixels[:, None] - means[None]) ** 2).sum(-1)
    pred = np.unique(labels)[dist.argmin(1)]
    assert (pred == labels).mean() > 0.8


def test_cli(tmp_path):
    spec = importlib.util.spec_from_file_location(
        'make_synthetic_dataset',
        osp.join(
            REPO, 'tools', 'dataset_converters', 'make_synthetic_dataset.py'
        ),
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    root = str(tmp_path / 'cli_cs')
    summary = cli.main(
        [
            'cityscapes',
            root,
            '--num-train',
            '2',
            '--num-val',
            '1',
            '--size',
            '32',
            '48',
            '--seed',
            '5',
        ]
    )
    assert summary['num_train'] == 2 and summary['size'] == [32, 48]
    assert len(_files(root)) == 6
    # Other parameters on the command line: refused, naming --force.
    argv = ['cityscapes', root, '--num-train', '1', '--size', '32', '48']
    with pytest.raises(SystemExit) as refused:
        cli.main(argv)
    message = str(refused.value.code)
    assert '--force' in message and 'force=True' not in message, message
    assert 'num_train: 2 -> 1' in message, message
    assert len(_files(root)) == 6
    assert cli.main(argv + ['--seed', '5', '--force'])['num_train'] == 1
    summary = cli.main(
        [
            'imagefolder',
            str(tmp_path / 'cli_cls'),
            '--num-classes',
            '3',
            '--num-train',
            '2',
            '--num-val',
            '1',
            '--size',
            '16',
            '16',
        ]
    )
    assert summary['classes'] == ['class_000', 'class_001', 'class_002']
    assert summary['num_train'] == 6 and summary['num_val'] == 3
    summary = cli.main(
        [
            'ade20k',
            str(tmp_path / 'cli_ade'),
            '--num-train',
            '1',
            '--num-val',
            '1',
            '--size',
            '16',
            '16',
            '--num-used-classes',
            '4',
        ]
    )
    assert summary['num_train'] == 1
