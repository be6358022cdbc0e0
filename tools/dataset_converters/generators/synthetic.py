"""Deterministic procedural segmentation scenes in real dataset layouts.

The scenes (:func:`~.scenes.render_scene`) are backgrounds and occluding
shapes of classes with fixed colours and textures. Three layouts are
written, each read by the unmodified dataset classes of OpenMMLab:

* :func:`generate_cityscapes`: the Cityscapes ``leftImg8bit``/``gtFine``
  layout with ``labelTrainIds`` maps (19 classes, 255 = ignore), read by
  mmseg's ``CityscapesDataset``.
* :func:`generate_ade20k`: the ADE20K (SceneParsing) layout with JPEG images
  and PNG annotations where 0 is "other" and 1..150 are classes, read by
  mmseg's ``ADE20KDataset`` with ``reduce_zero_label=True``.
* :func:`generate_imagefolder`: ``<root>/{train,val}/<class>/<idx>.png``,
  read by mmpretrain's ``CustomDataset``.

All three run one loop (:func:`_generate`); a :class:`_Layout` holds what
differs: folder and file names, the classes of an image, the options of
the renderer and how a label map is encoded.

Generation is deterministic: image ``i`` of a split only depends on the
parameters, the seed, the split and ``i`` (one ``numpy.random.Generator``
per image). Each generator writes a manifest ``mmrevnet_synthetic.json``
with its parameters; calling it again with the same parameters is a no-op.

This module only depends on numpy and OpenCV (no torch, no OpenMMLab).
"""

import os
import os.path as osp
import time
from typing import (
    Callable,
    Dict,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
)

import cv2
import numpy as np

from .manifest import finish_manifest, prepare_root
from .scenes import ClassAppearance, class_appearance, render_scene

__all__ = [
    'CITYSCAPES_CLASSES',
    'CITYSCAPES_PALETTE',
    'ADE20K_NUM_CLASSES',
    'MANIFEST_NAME',
    'GENERATOR_VERSION',
    'ClassAppearance',
    'class_appearance',
    'render_scene',
    'generate_cityscapes',
    'generate_ade20k',
    'generate_imagefolder',
]

#: Bump when the output of the generator changes for the same parameters;
#: it is part of the manifest, so old datasets are regenerated.
GENERATOR_VERSION = 1

#: Name of the JSON manifest written into the dataset root.
MANIFEST_NAME = 'mmrevnet_synthetic.json'

#: Class names of the Cityscapes trainIds 0..18, as in mmseg's
#: ``CityscapesDataset.METAINFO``.
CITYSCAPES_CLASSES = (
    'road',
    'sidewalk',
    'building',
    'wall',
    'fence',
    'pole',
    'traffic light',
    'traffic sign',
    'vegetation',
    'terrain',
    'sky',
    'person',
    'rider',
    'car',
    'truck',
    'bus',
    'train',
    'motorcycle',
    'bicycle',
)

#: Visualisation palette of the Cityscapes trainIds, as in mmseg's
#: ``CityscapesDataset.METAINFO``. It is *not* the appearance of the
#: synthetic classes (several of these colours are nearly equal).
CITYSCAPES_PALETTE = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (102, 102, 156),
    (190, 153, 153),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (255, 0, 0),
    (0, 0, 142),
    (0, 0, 70),
    (0, 60, 100),
    (0, 80, 100),
    (0, 0, 230),
    (119, 11, 32),
)

#: Number of classes of ADE20K (labels 1..150 in the annotation files).
ADE20K_NUM_CLASSES = 150

_CITYSCAPES_TRAIN_CITIES = ('aachen', 'bochum', 'bremen')
_CITYSCAPES_VAL_CITIES = ('frankfurt', 'lindau', 'munster')

_SPLIT_CODES = {'train': 1, 'val': 2}
# Fixed seeds of the class appearance tables: the appearance of a class is
# the same for every dataset seed and split.
_APPEARANCE_SEEDS = {'cityscapes': 1019, 'ade20k': 2150, 'imagefolder': 3001}


def _class_schedule(
    num_classes: int, per_image: int, index: int, seed: int, split: str
) -> List[int]:
    """Classes of image ``index``: a balanced walk over class permutations.

    Consecutive images take consecutive chunks of a sequence made of
    independent random permutations of the classes, so that every class
    appears about equally often and all classes appear within
    ``ceil(num_classes / per_image)`` consecutive images.

    Args:
        num_classes (int): Number of classes.
        per_image (int): Number of classes per image.
        index (int): Image index.
        seed (int): Dataset seed.
        split (str): Split name.

    Returns:
        list[int]: ``per_image`` class indices (may repeat at the seam of
        two permutations).
    """
    start = index * per_image
    out = []
    for pos in range(start, start + per_image):
        epoch, offset = divmod(pos, num_classes)
        rng = np.random.default_rng(
            [seed, _SPLIT_CODES.get(split, 9), 101, epoch]
        )
        out.append(int(rng.permutation(num_classes)[offset]))
    return out


def _boundary_mask(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within a ``width`` px band along the label boundaries."""
    edge = np.zeros(label.shape, bool)
    edge[1:] |= label[1:] != label[:-1]
    edge[:, 1:] |= label[:, 1:] != label[:, :-1]
    if width > 1:
        kernel = np.ones((width, width), np.uint8)
        edge = cv2.dilate(edge.astype(np.uint8), kernel).astype(bool)
    return edge


def _write_png(path: str, array: np.ndarray) -> None:
    """Write an RGB (``H, W, 3``) or grey (``H, W``) uint8 array as PNG."""
    if array.ndim == 3:
        array = array[..., ::-1]  # RGB -> BGR for OpenCV
    if not cv2.imwrite(
        path, np.ascontiguousarray(array), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    ):
        raise IOError(f'could not write {path}')


def _write_jpg(path: str, rgb: np.ndarray, quality: int) -> None:
    """Write an RGB uint8 array as JPEG."""
    if not cv2.imwrite(
        path,
        np.ascontiguousarray(rgb[..., ::-1]),
        [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
    ):
        raise IOError(f'could not write {path}')


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Random generator of image ``index`` of ``split``."""
    return np.random.default_rng([seed, _SPLIT_CODES.get(split, 9), index])


def _check_size(size: Sequence[int]) -> Tuple[int, int]:
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f'size must be (H, W) with H, W >= 16, got {size}')
    return size


def _result(manifest: dict, skipped: bool, seconds: float) -> dict:
    out = dict(manifest['summary'])
    out['skipped'] = skipped
    out['seconds'] = round(seconds, 3)
    return out


def _params(
    layout: str,
    counts: Dict[str, int],
    size: Tuple[int, int],
    seed: int,
    difficulty: float,
    **options: int,
) -> dict:
    """The manifest's parameters: everything the written files depend on.

    Args:
        layout (str): Layout name.
        counts (dict[str, int]): The arguments that set the image counts.
        size (tuple[int, int]): ``(H, W)`` of the images.
        seed (int): Dataset seed.
        difficulty (float): Strength of noise and jitter.
        **options (int): The layout's other (integer) arguments.

    Returns:
        dict: The parameters, in a fixed order (the manifest is compared
        as written).
    """
    params = dict(layout=layout, version=GENERATOR_VERSION)
    params.update({key: int(value) for key, value in counts.items()})
    params.update(
        size=list(size), seed=int(seed), difficulty=float(difficulty)
    )
    params.update({key: int(value) for key, value in options.items()})
    return params


class _Layout(NamedTuple):
    """What differs between the written layouts; :func:`_generate` loops.

    Image ``i`` of ``split`` is written to ``<root>/<image_dir>/<split
    folder>/<group>/<stem><image_suffix>`` and its label map (if any) to
    ``<root>/<ann_dir>/<split folder>/<group>/<stem><ann_suffix>``.

    Attributes:
        name (str): Layout name (manifest and summary).
        counts (dict[str, int]): Number of images of each split.
        split_dirs (dict[str, str]): Folder name of each split.
        image_dir (str): Top folder of the images ('' for none).
        ann_dir (str, optional): Top folder of the label maps; None when
            no label maps are written.
        subdirs (tuple[str, ...]): The generated top folders, removed when
            the data set is regenerated.
        groups (callable): ``split -> folders`` below the split folder
            (created even when empty).
        place (callable): ``(split, i) -> (group, stem)`` of image ``i``.
        scene (callable): ``(split, i, rng) -> (classes, options)``: the
            classes of the image and the keyword arguments of
            :func:`render_scene` besides ``difficulty``.
        image_suffix (str): End of the image file names.
        ann_suffix (str): End of the label map file names.
        encode (callable): Label map of :func:`render_scene` (class
            indices, -1 for void) to the uint8 map written.
        num_bins (int): Length of the per-split label histogram (values
            above ``num_bins - 1`` are counted in the last bin).
        jpeg_quality (int, optional): Images are JPEG of this quality
            instead of PNG.
    """

    name: str
    counts: Dict[str, int]
    split_dirs: Dict[str, str]
    image_dir: str
    ann_dir: Optional[str]
    subdirs: Tuple[str, ...]
    groups: Callable[[str], Sequence[str]]
    place: Callable[[str, int], Tuple[str, str]]
    scene: Callable[[str, int, np.random.Generator], Tuple[List[int], dict]]
    image_suffix: str = '.png'
    ann_suffix: str = '.png'
    encode: Optional[Callable[[np.ndarray], np.ndarray]] = None
    num_bins: int = 0
    jpeg_quality: Optional[int] = None

    def dirs(self, key: str) -> Dict[str, str]:
        """Folders of ``key`` (``image_dir`` or ``ann_dir``) per split."""
        top = getattr(self, key)
        return {
            split: f'{top}/{folder}' if top else folder
            for split, folder in self.split_dirs.items()
        }


def _generate(
    root: str,
    params: dict,
    layout: _Layout,
    appearance: ClassAppearance,
    info: dict,
    pixels: Callable[[Dict[str, np.ndarray]], dict],
    force: bool,
) -> dict:
    """Write the images (and label maps) of every split; the shared loop.

    Args:
        root (str): Dataset root.
        params (dict): The generator's parameters (the manifest's key);
            ``size``, ``seed`` and ``difficulty`` are read from it.
        layout (_Layout): Names, scene and encoding of the layout.
        appearance (ClassAppearance): Appearance table of the classes.
        info (dict): Summary entries written after ``root`` and ``layout``.
        pixels (callable): Per-split label histograms to the summary
            entries that end the summary.
        force (bool): Regenerate even if an up-to-date dataset exists.

    Returns:
        dict: The summary, with ``skipped`` and ``seconds``.
    """
    start = time.perf_counter()
    per_image = 1 if layout.ann_dir is None else 2
    num_files = per_image * sum(layout.counts.values())
    old = prepare_root(
        root, params, layout.subdirs, num_files, force, MANIFEST_NAME
    )
    if old is not None:
        return _result(old, True, time.perf_counter() - start)

    size, seed = tuple(params['size']), params['seed']
    tops = [d for d in (layout.image_dir, layout.ann_dir) if d is not None]
    hists = {}
    for split, num in layout.counts.items():
        folder = layout.split_dirs[split]
        for top in tops:
            for group in layout.groups(split):
                os.makedirs(osp.join(root, top, folder, group), exist_ok=True)
        hist = np.zeros(layout.num_bins, np.int64)
        for i in range(num):
            rng = _image_rng(seed, split, i)
            classes, options = layout.scene(split, i, rng)
            image, label = render_scene(
                size,
                classes,
                appearance,
                rng,
                params['difficulty'],
                **options,
            )
            group, stem = layout.place(split, i)
            path = osp.join(root, layout.image_dir, folder, group, stem)
            if layout.jpeg_quality is None:
                _write_png(path + layout.image_suffix, image)
            else:
                _write_jpg(
                    path + layout.image_suffix, image, layout.jpeg_quality
                )
            if layout.ann_dir is None:
                continue
            label = layout.encode(label)
            path = osp.join(root, layout.ann_dir, folder, group, stem)
            _write_png(path + layout.ann_suffix, label)
            hist += np.bincount(
                np.minimum(label.ravel(), layout.num_bins - 1),
                minlength=layout.num_bins,
            )
        hists[split] = hist
    summary = dict(root=osp.abspath(root), layout=layout.name, **info)
    summary.update(
        num_train=layout.counts['train'],
        num_val=layout.counts['val'],
        size=list(size),
        img_dirs=layout.dirs('image_dir'),
    )
    if layout.ann_dir is not None:
        summary['ann_dirs'] = layout.dirs('ann_dir')
    summary.update(pixels(hists))
    manifest = finish_manifest(root, params, summary, MANIFEST_NAME)
    return _result(manifest, False, time.perf_counter() - start)


def generate_cityscapes(
    root: str,
    num_train: int = 16,
    num_val: int = 8,
    size: Tuple[int, int] = (64, 128),
    seed: int = 0,
    difficulty: float = 0.5,
    num_shapes: int = 6,
    ignore_width: int = 1,
    num_void: int = 1,
    force: bool = False,
) -> dict:
    """Generate a synthetic dataset in the Cityscapes layout.

    Images are ``<root>/leftImg8bit/<split>/<city>/<city>_<seq:06d>_000019
    _leftImg8bit.png`` and label maps ``<root>/gtFine/<split>/<city>/<same
    stem>_gtFine_labelTrainIds.png`` (uint8, trainIds 0..18, 255 =
    ignore), so that mmseg's ``CityscapesDataset`` reads it with
    ``data_prefix=dict(img_path='leftImg8bit/train',
    seg_map_path='gtFine/train')``. Every image holds two background
    classes and ``num_shapes`` shapes; the classes walk through balanced
    permutations of the 19 classes, so every class appears in any
    ``ceil(19 / (num_shapes + 2))`` consecutive images of a split.

    Image ``i`` of a split only depends on the parameters other than the
    image counts, so the first images of a larger dataset are those of a
    smaller one.

    Args:
        root (str): Dataset root.
        num_train (int): Number of training images. Defaults to 16.
        num_val (int): Number of validation images. Defaults to 8.
        size (tuple[int, int]): ``(H, W)`` of the images. Defaults to
            (64, 128).
        seed (int): Dataset seed. Defaults to 0.
        difficulty (float): Strength of noise and jitter in [0, 1].
            Defaults to 0.5.
        num_shapes (int): Number of shapes per image. Defaults to 6.
        ignore_width (int): Width in pixels of the ignore (255) band along
            class boundaries; 0 disables it. Defaults to 1.
        num_void (int): Maximum number of small void blobs (random
            appearance, label 255) per image. Defaults to 1.
        force (bool): Regenerate even if an up-to-date dataset exists, and
            overwrite a root without manifest. Defaults to False.

    Returns:
        dict: Summary with ``root``, ``layout``, ``classes``,
        ``num_train``, ``num_val``, ``img_dirs``/``ann_dirs`` (per split,
        relative to ``root``), ``class_pixels`` (per split, pixels of each
        trainId), ``ignore_pixels`` (per split), ``skipped`` (whether an
        existing dataset was reused) and ``seconds``.
    """
    size = _check_size(size)
    params = _params(
        'cityscapes',
        dict(num_train=num_train, num_val=num_val),
        size,
        seed,
        difficulty,
        num_shapes=num_shapes,
        ignore_width=ignore_width,
        num_void=num_void,
    )
    num_classes = len(CITYSCAPES_CLASSES)
    cities = dict(train=_CITYSCAPES_TRAIN_CITIES, val=_CITYSCAPES_VAL_CITIES)

    def place(split, i):
        city = cities[split][i % len(cities[split])]
        return city, f'{city}_{i:06d}_000019'

    def scene(split, i, rng):
        schedule = _class_schedule(
            num_classes, num_shapes + 2, i, params['seed'], split
        )
        return schedule, dict(num_backgrounds=2, num_void=num_void)

    def encode(label):
        label = label.astype(np.int64)
        if ignore_width > 0:
            label[_boundary_mask(label, ignore_width)] = -1
        return np.where(label < 0, 255, label).astype(np.uint8)

    def pixels(hists):
        return dict(
            class_pixels={
                s: h[:num_classes].tolist() for s, h in hists.items()
            },
            ignore_pixels={s: int(h[num_classes]) for s, h in hists.items()},
        )

    layout = _Layout(
        name='cityscapes',
        counts=dict(train=int(num_train), val=int(num_val)),
        split_dirs=dict(train='train', val='val'),
        image_dir='leftImg8bit',
        ann_dir='gtFine',
        subdirs=('leftImg8bit', 'gtFine'),
        groups=cities.__getitem__,
        place=place,
        scene=scene,
        image_suffix='_leftImg8bit.png',
        ann_suffix='_gtFine_labelTrainIds.png',
        encode=encode,
        # trainIds, and everything else (255) in the last bin.
        num_bins=num_classes + 1,
    )
    info = dict(
        classes=list(CITYSCAPES_CLASSES),
        palette=[list(p) for p in CITYSCAPES_PALETTE],
    )
    appearance = class_appearance(num_classes, _APPEARANCE_SEEDS['cityscapes'])
    return _generate(root, params, layout, appearance, info, pixels, force)


def generate_ade20k(
    root: str,
    num_train: int = 16,
    num_val: int = 8,
    size: Tuple[int, int] = (64, 64),
    seed: int = 0,
    difficulty: float = 0.5,
    num_used_classes: Optional[int] = None,
    num_shapes: int = 5,
    num_other: int = 1,
    jpeg_quality: int = 95,
    force: bool = False,
) -> dict:
    """Generate a synthetic dataset in the ADE20K (SceneParsing) layout.

    Images are ``<root>/images/<split>/ADE_{train,val}_%08d.jpg`` (JPEG, as
    in the real dataset) and annotations ``<root>/annotations/<split>/<same
    stem>.png`` with ``split`` in ``training``/``validation``. Label 0 is
    "other" (small blobs with a random appearance) and 1..150 are classes,
    as expected by mmseg's ``ADE20KDataset`` with ``reduce_zero_label=True``.
    Only labels ``1..num_used_classes`` are used.

    Args:
        root (str): Dataset root.
        num_train (int): Number of training images. Defaults to 16.
        num_val (int): Number of validation images. Defaults to 8.
        size (tuple[int, int]): ``(H, W)`` of the images. Defaults to
            (64, 64).
        seed (int): Dataset seed. Defaults to 0.
        difficulty (float): Strength of noise and jitter in [0, 1].
            Defaults to 0.5.
        num_used_classes (int, optional): Use labels ``1..num_used_classes``
            only; None uses all 150. Defaults to None.
        num_shapes (int): Number of shapes per image. Defaults to 5.
        num_other (int): Maximum number of "other" (label 0) blobs per
            image. Defaults to 1.
        jpeg_quality (int): JPEG quality of the images. Defaults to 95.
        force (bool): Regenerate even if an up-to-date dataset exists, and
            overwrite a root without manifest. Defaults to False.

    Returns:
        dict: Summary with ``root``, ``layout``, ``num_used_classes``,
        ``num_train``, ``num_val``, ``img_dirs``/``ann_dirs`` (per split,
        relative to ``root``), ``class_pixels`` (per split, pixels of each
        label 0..150), ``skipped`` and ``seconds``.
    """
    size = _check_size(size)
    used = (
        ADE20K_NUM_CLASSES
        if num_used_classes is None
        else int(num_used_classes)
    )
    if not 1 <= used <= ADE20K_NUM_CLASSES:
        raise ValueError(f'num_used_classes must be in [1, 150], got {used}')
    params = _params(
        'ade20k',
        dict(num_train=num_train, num_val=num_val),
        size,
        seed,
        difficulty,
        num_used_classes=used,
        num_shapes=num_shapes,
        num_other=num_other,
        jpeg_quality=jpeg_quality,
    )
    prefixes = dict(train='ADE_train', val='ADE_val')

    def scene(split, i, rng):
        schedule = _class_schedule(
            used, num_shapes + 1, i, params['seed'], split
        )
        return schedule, dict(num_backgrounds=1, num_void=num_other)

    def encode(label):
        # Class index k -> label k + 1; void (-1) -> 0 ("other").
        return (label + 1).astype(np.uint8)

    layout = _Layout(
        name='ade20k',
        counts=dict(train=int(num_train), val=int(num_val)),
        split_dirs=dict(train='training', val='validation'),
        image_dir='images',
        ann_dir='annotations',
        subdirs=('images', 'annotations'),
        groups=lambda split: ('',),
        place=lambda split, i: ('', f'{prefixes[split]}_{i + 1:08d}'),
        scene=scene,
        image_suffix='.jpg',
        encode=encode,
        num_bins=ADE20K_NUM_CLASSES + 1,
        jpeg_quality=int(jpeg_quality),
    )
    appearance = class_appearance(used, _APPEARANCE_SEEDS['ade20k'])
    return _generate(
        root,
        params,
        layout,
        appearance,
        dict(num_used_classes=used),
        lambda hists: dict(
            class_pixels={s: h.tolist() for s, h in hists.items()}
        ),
        force,
    )


def generate_imagefolder(
    root: str,
    num_classes: int = 10,
    per_class_train: int = 8,
    per_class_val: int = 4,
    size: Tuple[int, int] = (64, 64),
    seed: int = 0,
    difficulty: float = 0.5,
    num_distractors: int = 2,
    force: bool = False,
) -> dict:
    """Generate a classification dataset in the image-folder layout.

    Images are ``<root>/{train,val}/<class_name>/<idx:05d>.png`` with class
    names ``class_000``, ``class_001``, ... (sorted order = class index), as
    read by mmpretrain's ``CustomDataset`` (``data_prefix='train'``). Each
    image is a scene whose background is its class (the dominant texture
    and colour) with up to ``num_distractors`` small shapes of other
    classes on top.

    Args:
        root (str): Dataset root.
        num_classes (int): Number of classes. Defaults to 10.
        per_class_train (int): Training images per class. Defaults to 8.
        per_class_val (int): Validation images per class. Defaults to 4.
        size (tuple[int, int]): ``(H, W)`` of the images. Defaults to
            (64, 64).
        seed (int): Dataset seed. Defaults to 0.
        difficulty (float): Strength of noise and jitter in [0, 1].
            Defaults to 0.5.
        num_distractors (int): Maximum number of shapes of other classes
            per image. Defaults to 2.
        force (bool): Regenerate even if an up-to-date dataset exists, and
            overwrite a root without manifest. Defaults to False.

    Returns:
        dict: Summary with ``root``, ``layout``, ``classes``,
        ``num_train``, ``num_val``, ``img_dirs`` (per split, relative to
        ``root``), ``skipped`` and ``seconds``.
    """
    size = _check_size(size)
    if num_classes < 2:
        raise ValueError(f'num_classes must be >= 2, got {num_classes}')
    params = _params(
        'imagefolder',
        dict(
            num_classes=num_classes,
            per_class_train=per_class_train,
            per_class_val=per_class_val,
        ),
        size,
        seed,
        difficulty,
        num_distractors=num_distractors,
    )
    per_class = dict(train=int(per_class_train), val=int(per_class_val))
    names = [f'class_{c:03d}' for c in range(num_classes)]

    def place(split, i):
        c, j = divmod(i, per_class[split])
        return names[c], f'{j:05d}'

    def scene(split, i, rng):
        # Images are numbered class by class: the class is the background.
        c = i // per_class[split]
        others = [k for k in range(num_classes) if k != c]
        distract = rng.choice(
            others, int(rng.integers(0, num_distractors + 1))
        )
        options = dict(
            num_backgrounds=1, shape_scale=(0.15, 0.35), dominant=True
        )
        return [c] + [int(k) for k in distract], options

    layout = _Layout(
        name='imagefolder',
        counts={s: num_classes * n for s, n in per_class.items()},
        split_dirs=dict(train='train', val='val'),
        image_dir='',
        ann_dir=None,
        subdirs=('train', 'val'),
        groups=lambda split: names,
        place=place,
        scene=scene,
    )
    appearance = class_appearance(
        num_classes, _APPEARANCE_SEEDS['imagefolder']
    )
    return _generate(
        root,
        params,
        layout,
        appearance,
        dict(classes=names),
        lambda hists: {},
        force,
    )
