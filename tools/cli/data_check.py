"""Check a segmentation data set before training starts.

mmseg builds its data sets lazily and fails mid-training on a missing
label file (an ``OSError`` deep in a data worker), trains silently on an
empty folder until the sampler complains, and lets a label value outside
the classes reach the loss, where it becomes a CUDA assert or a silently
wrong target. :func:`check_segmentation_data` reads every label map of
the training set once and raises :class:`DataCheckError` naming the file
or the value, before the first iteration (``tools/train.py`` calls it;
``--skip-data-check`` skips it).
"""

import os.path as osp
from typing import Optional

import numpy as np


class DataCheckError(ValueError):
    """The training data set cannot be trained on as configured."""


def _num_classes(cfg) -> Optional[int]:
    head = cfg.model.get('decode_head')
    if isinstance(head, (list, tuple)):
        head = head[-1]
    return None if head is None else head.get('num_classes')


def check_segmentation_data(cfg, max_files: Optional[int] = None) -> int:
    """Check the training set of a segmentation config.

    Checks that the set has images, that every image has its label file,
    and that every label value is a class index (after
    ``reduce_zero_label``) or the ignore index 255.

    Args:
        cfg (Config): A training config (its ``train_dataloader`` and
            ``model.decode_head.num_classes``).
        max_files (int, optional): Read at most this many label files
            (all when None). Defaults to None.

    Returns:
        int: Number of label files read (0 for a config that is not a
        segmentation config).

    Raises:
        DataCheckError: Naming the data folder, the file or the value.
    """
    from mmengine.registry import DATASETS, init_default_scope
    from PIL import Image

    num_classes = _num_classes(cfg)
    dataset_cfg = cfg.get('train_dataloader', {}).get('dataset')
    if num_classes is None or dataset_cfg is None:
        return 0
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    # Not serialised: mmengine's serialisation fails on an empty list.
    dataset = DATASETS.build(dict(dataset_cfg, serialize_data=False))
    infos = [dataset.get_data_info(i) for i in range(len(dataset))]
    if not infos:
        prefix = dataset_cfg.get('data_prefix', {}).get('img_path', '')
        raise DataCheckError(
            'the training set is empty: no image with suffix '
            f'{getattr(dataset, "img_suffix", "?")!r} under '
            f'{osp.join(dataset.data_root or "", prefix)!r} '
            '(train_dataloader.dataset.data_root / data_prefix.img_path)'
        )
    reduce_zero = bool(infos[0].get('reduce_zero_label', False))
    checked = 0
    for info in infos[:max_files]:
        path = info.get('seg_map_path')
        if path is None:
            continue
        if not osp.isfile(path):
            raise DataCheckError(
                f'label file {path!r} of image {info["img_path"]!r} is missing'
            )
        values = np.unique(np.asarray(Image.open(path)))
        if reduce_zero:
            # mmseg maps 0 to the ignore index and v to v - 1.
            values = np.where(values == 0, 255, values - 1)
        bad = values[(values >= num_classes) & (values != 255)]
        if bad.size:
            raise DataCheckError(
                f'label file {path!r} holds value {int(bad[0])}'
                f'{" (after reduce_zero_label)" if reduce_zero else ""}, '
                f'outside the {num_classes} classes '
                f'(model.decode_head.num_classes) and not the ignore '
                'index 255'
            )
        checked += 1
    return checked
