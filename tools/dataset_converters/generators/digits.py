"""scikit-learn's handwritten digits as an image-folder data set.

``sklearn.datasets.load_digits`` ships the test set of the UCI "Optical
Recognition of Handwritten Digits" data (1797 grayscale 8x8 images of the
digits 0-9, values 0..16, about 180 per class) inside the scikit-learn
package, so it needs no download. :func:`export_digits` writes it as

``<root>/{train,val}/<digit>/<index:04d>.png``

(``index`` is the sample's position in ``load_digits``), the layout that
mmpretrain's ``CustomDataset`` reads with ``data_prefix='train'``. Images
are upscaled (bilinear) to ``size x size`` and stored as 3-channel RGB
PNGs with values ``round(v * 255 / 16)`` before upscaling. The split is
stratified and deterministic: for every class, a fixed fraction of its
samples, chosen by ``numpy.random.default_rng(seed)``, goes to ``val``.

A manifest ``mmrevnet_digits.json`` records the parameters; exporting
again with the same parameters is a no-op.
"""

import os
import os.path as osp
import time
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from .manifest import finish_manifest, prepare_root

__all__ = [
    'DIGITS_CLASSES',
    'DIGITS_MANIFEST',
    'load_digits_arrays',
    'split_digits',
    'export_digits',
]

#: Class names = folder names, in class-index order.
DIGITS_CLASSES = tuple(str(d) for d in range(10))

#: Name of the JSON manifest written into the data set root.
DIGITS_MANIFEST = 'mmrevnet_digits.json'

_SPLITS = ('train', 'val')
# Bump when the output changes for the same parameters.
_EXPORT_VERSION = 1


def load_digits_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """The digits of scikit-learn as arrays.

    Returns:
        tuple[np.ndarray, np.ndarray]: ``images`` of shape ``(1797, 8, 8)``
        (float, values 0..16) and ``labels`` of shape ``(1797,)`` (int).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - depends on the env
        raise ImportError(
            'exporting the digits needs scikit-learn (pip install '
            'scikit-learn); the data ship with it, nothing is downloaded'
        ) from error
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def split_digits(
    labels: np.ndarray, val_fraction: float = 0.2, seed: int = 0
) -> Dict[str, np.ndarray]:
    """Stratified, deterministic train/val split of sample indices.

    Args:
        labels (np.ndarray): Class of every sample.
        val_fraction (float): Fraction of every class that goes to
            ``val`` (rounded per class). Defaults to 0.2.
        seed (int): Seed of the split. Defaults to 0.

    Returns:
        dict[str, np.ndarray]: Sorted sample indices of ``'train'`` and
        ``'val'``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in (0, 1), got {val_fraction}')
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        num_val = int(round(len(members) * val_fraction))
        val.append(members[:num_val])
        train.append(members[num_val:])
    return dict(
        train=np.sort(np.concatenate(train)), val=np.sort(np.concatenate(val))
    )


def _to_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 image with values 0..16 -> ``size x size x 3`` uint8."""
    gray = np.round(image.astype(np.float32) * (255.0 / 16.0))
    gray = np.clip(gray, 0, 255).astype(np.uint8)
    if size != gray.shape[0]:
        gray = cv2.resize(gray, (size, size), interpolation=cv2.INTER_LINEAR)
    return np.repeat(gray[:, :, None], 3, axis=2)


def export_digits(
    root: str,
    size: int = 32,
    val_fraction: float = 0.2,
    seed: int = 0,
    force: bool = False,
    images: Optional[np.ndarray] = None,
    labels: Optional[np.ndarray] = None,
) -> dict:
    """Write the digits as an image-folder data set.

    Args:
        root (str): Data set root.
        size (int): Side of the written images in pixels (8 keeps the
            original resolution). Defaults to 32.
        val_fraction (float): Fraction of each class in ``val``.
            Defaults to 0.2.
        seed (int): Seed of the split. Defaults to 0.
        force (bool): Export even if an up-to-date export exists, and
            overwrite a root that holds ``train``/``val`` without manifest.
            Defaults to False.
        images (np.ndarray, optional): ``(N, 8, 8)`` images with values
            0..16 instead of scikit-learn's (for tests). Defaults to None.
        labels (np.ndarray, optional): Their classes 0..9. Defaults to None.

    Returns:
        dict: Summary with ``root``, ``classes``, ``num_train``,
        ``num_val``, ``per_class`` (per split, images of each class),
        ``size``, ``mean``/``std`` (per-channel pixel statistics of the
        training split, 0..255 scale), ``skipped`` and ``seconds``.
    """
    start = time.perf_counter()
    size = int(size)
    if size < 1:
        raise ValueError(f'size must be positive, got {size}')
    custom = images is not None or labels is not None
    if images is None or labels is None:
        if custom:
            raise ValueError('give both images and labels, or neither')
        images, labels = load_digits_arrays()
    labels = np.asarray(labels, dtype=np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (8, 8):
        raise ValueError(
            f'expected (N, 8, 8) images and N labels, got {images.shape} '
            f'and {labels.shape}'
        )
    if labels.min() < 0 or labels.max() >= len(DIGITS_CLASSES):
        raise ValueError('labels must be digits 0..9')
    params = dict(
        version=_EXPORT_VERSION,
        size=size,
        val_fraction=float(val_fraction),
        seed=int(seed),
        num_samples=int(labels.shape[0]),
        custom_data=custom,
    )
    old = prepare_root(
        root,
        params,
        _SPLITS,
        int(labels.shape[0]),
        force,
        manifest_name=DIGITS_MANIFEST,
    )
    if old is not None:
        summary = dict(old['summary'], skipped=True)
        summary['seconds'] = round(time.perf_counter() - start, 3)
        return summary

    splits = split_digits(labels, val_fraction, seed)
    per_class, moments = {}, None
    for split, indices in splits.items():
        for name in DIGITS_CLASSES:
            os.makedirs(osp.join(root, split, name), exist_ok=True)
        sums = np.zeros((2, 3), np.float64)
        for index in indices:
            rgb = _to_rgb(images[index], size)
            name = DIGITS_CLASSES[labels[index]]
            path = osp.join(root, split, name, f'{index:04d}.png')
            if not cv2.imwrite(path, rgb[:, :, ::-1]):
                raise OSError(f'could not write {path}')
            pixels = rgb.reshape(-1, 3).astype(np.float64)
            sums += (pixels.sum(0), (pixels**2).sum(0))
        counts = np.bincount(labels[indices], minlength=len(DIGITS_CLASSES))
        per_class[split] = counts.tolist()
        if split == 'train':
            moments = sums / (len(indices) * size * size)
    mean = moments[0]
    std = np.sqrt(np.maximum(moments[1] - mean**2, 0.0))
    summary = dict(
        root=osp.abspath(root),
        classes=list(DIGITS_CLASSES),
        num_train=int(len(splits['train'])),
        num_val=int(len(splits['val'])),
        per_class=per_class,
        size=size,
        mean=[round(float(m), 3) for m in mean],
        std=[round(float(s), 3) for s in std],
    )
    finish_manifest(root, params, summary, manifest_name=DIGITS_MANIFEST)
    summary = dict(summary, skipped=False)
    summary['seconds'] = round(time.perf_counter() - start, 3)
    return summary
