"""Deterministic procedural segmentation scenes in real dataset layouts.

The scenes are made of a background (one or two classes) and several large
shapes (rectangles, ellipses, polygons and stripes), each belonging to a
class. Every class has a fixed appearance: a mean RGB colour and a texture
(stripes, checker, dots, waves or grain) with a class-specific period,
orientation, amplitude and colour direction, so that classes can be told
apart from their local appearance. Each image adds per-shape colour and
brightness jitter, a global brightness/colour cast and pixel noise, whose
strength is set by ``difficulty``. Shapes are drawn in random order, so they
occlude each other, and the label of every pixel is the class of the topmost
shape covering it.

Three layouts are written, each read by the unmodified dataset classes of
OpenMMLab:

* :func:`generate_cityscapes`: the Cityscapes ``leftImg8bit``/``gtFine``
  layout with ``labelTrainIds`` maps (19 classes, 255 = ignore), read by
  mmseg's ``CityscapesDataset``.
* :func:`generate_ade20k`: the ADE20K (SceneParsing) layout with JPEG images
  and PNG annotations where 0 is "other" and 1..150 are classes, read by
  mmseg's ``ADE20KDataset`` with ``reduce_zero_label=True``.
* :func:`generate_imagefolder`: ``<root>/{train,val}/<class>/<idx>.png``,
  read by mmpretrain's ``CustomDataset``.

Generation is deterministic: image ``i`` of a split only depends on the
parameters, the seed, the split and ``i`` (one ``numpy.random.Generator``
per image). Each generator writes a manifest ``mmrevnet_synthetic.json``
with its parameters; calling it again with the same parameters is a no-op.

This module only depends on numpy and OpenCV (no torch, no OpenMMLab).
"""

import functools
import json
import math
import os
import os.path as osp
import shutil
import time
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

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

_TEXTURES = ('stripes', 'checker', 'dots', 'waves', 'grain')
_SPLIT_CODES = {'train': 1, 'val': 2}
# Fixed seeds of the class appearance tables: the appearance of a class is
# the same for every dataset seed and split.
_APPEARANCE_SEEDS = {'cityscapes': 1019, 'ade20k': 2150, 'imagefolder': 3001}


class ClassAppearance:
    """Appearance table of a set of classes.

    Args:
        mean (np.ndarray): ``(C, 3)`` float32 mean RGB colours.
        texture (Sequence[str]): Texture kind of each class, one of
            ``'stripes'``, ``'checker'``, ``'dots'``, ``'waves'`` and
            ``'grain'``.
        period (np.ndarray): ``(C,)`` texture periods in pixels.
        angle (np.ndarray): ``(C,)`` texture orientations in radians.
        amplitude (np.ndarray): ``(C,)`` texture amplitudes (0..255 scale).
        direction (np.ndarray): ``(C, 3)`` unit RGB directions along which
            the texture modulates the colour.
    """

    def __init__(
        self,
        mean: np.ndarray,
        texture: Sequence[str],
        period: np.ndarray,
        angle: np.ndarray,
        amplitude: np.ndarray,
        direction: np.ndarray,
    ) -> None:
        self.mean = mean
        self.texture = tuple(texture)
        self.period = period
        self.angle = angle
        self.amplitude = amplitude
        self.direction = direction

    def __len__(self) -> int:
        return len(self.texture)


def _spread_colours(num: int, rng: np.random.Generator) -> np.ndarray:
    """Pick ``num`` well separated RGB colours (farthest point sampling).

    Args:
        num (int): Number of colours.
        rng (np.random.Generator): Random generator of the first colour.

    Returns:
        np.ndarray: ``(num, 3)`` float32 colours within [40, 215].
    """
    steps = max(6, int(math.ceil(num ** (1 / 3))) * 3)
    axis = np.linspace(40.0, 215.0, steps)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing='ij'), -1)
    grid = grid.reshape(-1, 3)
    chosen = [int(rng.integers(len(grid)))]
    dist = np.linalg.norm(grid - grid[chosen[0]], axis=1)
    for _ in range(num - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(grid - grid[nxt], axis=1))
    colours = grid[chosen]
    # Shuffle so that neighbouring class ids do not follow the sampling
    # order (the first colours are the corners of the cube).
    return colours[rng.permutation(num)].astype(np.float32)


@functools.lru_cache(maxsize=16)
def class_appearance(num_classes: int, seed: int = 0) -> ClassAppearance:
    """Build the fixed appearance table of ``num_classes`` classes.

    Args:
        num_classes (int): Number of classes.
        seed (int): Seed of the table (not of the dataset). Defaults to 0.

    Returns:
        ClassAppearance: The appearance table.
    """
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes}')
    rng = np.random.default_rng([seed, num_classes, 7])
    mean = _spread_colours(num_classes, rng)
    texture = [_TEXTURES[i % len(_TEXTURES)] for i in range(num_classes)]
    texture = [texture[i] for i in rng.permutation(num_classes)]
    period = rng.uniform(5.0, 14.0, num_classes).astype(np.float32)
    angle = rng.uniform(0.0, math.pi, num_classes).astype(np.float32)
    amplitude = rng.uniform(14.0, 30.0, num_classes).astype(np.float32)
    direction = rng.normal(size=(num_classes, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return ClassAppearance(
        mean, texture, period, angle, amplitude, direction.astype(np.float32)
    )


@functools.lru_cache(maxsize=8)
def _grid(height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinate grids ``(yy, xx)`` of shape ``(H, W)`` (float32)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return yy, xx


def _texture(
    kind: str,
    period: float,
    angle: float,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Texture pattern with values in [-1, 1] over the whole image.

    Args:
        kind (str): Texture kind.
        period (float): Period in pixels.
        angle (float): Orientation in radians.
        height (int): Image height.
        width (int): Image width.
        rng (np.random.Generator): Random phases (and grain noise).

    Returns:
        np.ndarray: ``(H, W)`` float32 pattern.
    """
    if kind == 'grain':
        cells = (
            max(2, int(round(height / period * 2))),
            max(2, int(round(width / period * 2))),
        )
        coarse = rng.standard_normal(cells).astype(np.float32)
        fine = cv2.resize(
            coarse, (width, height), interpolation=cv2.INTER_LINEAR
        )
        return np.clip(fine, -1.5, 1.5) / 1.5
    yy, xx = _grid(height, width)
    cos, sin = math.cos(angle), math.sin(angle)
    omega = np.float32(2 * math.pi / period)
    phase_u, phase_v = rng.uniform(0, 2 * math.pi, 2)
    u = (xx * cos + yy * sin) * omega + np.float32(phase_u)
    if kind == 'stripes':
        return np.sin(u)
    v = (yy * cos - xx * sin) * omega + np.float32(phase_v)
    if kind == 'checker':
        return np.sign(np.sin(u) * np.sin(v)).astype(np.float32)
    if kind == 'dots':
        dots = np.cos(u) * np.cos(v) > 0.3
        return np.where(dots, np.float32(1), np.float32(-1))
    if kind == 'waves':
        return np.sin(u + 1.5 * np.sin(v * np.float32(0.5)))
    raise ValueError(f'unknown texture {kind!r}')


def _difficulty_params(difficulty: float) -> Dict[str, float]:
    """Map ``difficulty`` in [0, 1] to the strength of the nuisances."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f'difficulty must be in [0, 1], got {difficulty}')
    d = float(difficulty)
    # Pixel noise grows fastest: it is averaged away by a network's
    # receptive field but defeats a per-pixel colour classifier. Per-shape
    # and per-image shifts, which no context can undo, grow slower.
    return dict(
        noise=4.0 + 36.0 * d,  # std of the i.i.d. pixel noise
        shape_shift=3.0 + 12.0 * d,  # std of the per-shape colour offset
        shape_gain=0.03 + 0.12 * d,  # per-shape brightness jitter
        global_gain=0.03 + 0.12 * d,  # per-image brightness jitter
        cast=2.0 + 8.0 * d,  # std of the per-image colour cast
        contrast=1.0 - 0.3 * d,  # shrink of class colours towards grey
        angle_jitter=0.1 + 0.5 * d,  # texture orientation jitter (rad)
        period_jitter=0.05 + 0.25 * d,  # relative texture period jitter
    )


def _draw_shape(
    canvas: np.ndarray,
    value: int,
    rng: np.random.Generator,
    scale: Tuple[float, float],
    kind: Optional[str] = None,
) -> None:
    """Draw one random filled shape with ``value`` into ``canvas``.

    Args:
        canvas (np.ndarray): ``(H, W)`` uint8 instance map, drawn in place.
        value (int): Value written under the shape.
        rng (np.random.Generator): Random generator.
        scale (tuple[float, float]): Range of the shape size as a fraction
            of the image size.
        kind (str, optional): ``'rect'``, ``'ellipse'``, ``'polygon'`` or
            ``'stripe'``; random when None. Defaults to None.
    """
    height, width = canvas.shape
    if kind is None:
        kind = ('rect', 'ellipse', 'polygon', 'stripe')[
            int(rng.choice(4, p=(0.3, 0.3, 0.3, 0.1)))
        ]
    colour = (int(value),)
    cy = rng.uniform(0.05, 0.95) * height
    cx = rng.uniform(0.05, 0.95) * width
    sh = rng.uniform(*scale) * height
    sw = rng.uniform(*scale) * width
    if kind == 'rect':
        angle = 0.0 if rng.random() < 0.5 else rng.uniform(-30, 30)
        box = cv2.boxPoints(((cx, cy), (sw, sh), angle))
        cv2.fillPoly(canvas, [np.round(box).astype(np.int32)], colour)
    elif kind == 'ellipse':
        cv2.ellipse(
            canvas,
            (int(round(cx)), int(round(cy))),
            (max(2, int(sw / 2)), max(2, int(sh / 2))),
            float(rng.uniform(0, 180)),
            0,
            360,
            colour,
            -1,
        )
    elif kind == 'polygon':
        num = int(rng.integers(3, 7))
        # Roughly evenly spread vertices: no needle-like slivers.
        theta = rng.uniform(0, 2 * math.pi) + (
            np.arange(num) + rng.uniform(-0.3, 0.3, num)
        ) * (2 * math.pi / num)
        radius = rng.uniform(0.65, 1.0, num)
        pts = np.stack(
            [
                cx + radius * np.cos(theta) * sw * 0.6,
                cy + radius * np.sin(theta) * sh * 0.6,
            ],
            -1,
        )
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], colour)
    elif kind == 'stripe':
        angle = rng.uniform(0, math.pi)
        length = max(height, width) * rng.uniform(0.6, 1.2)
        dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
        thick = max(3, int(round(min(height, width) * rng.uniform(0.1, 0.2))))
        cv2.line(
            canvas,
            (int(cx - dx), int(cy - dy)),
            (int(cx + dx), int(cy + dy)),
            colour,
            thick,
        )
    else:
        raise ValueError(f'unknown shape {kind!r}')


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


def render_scene(
    size: Tuple[int, int],
    classes: Sequence[int],
    appearance: ClassAppearance,
    rng: np.random.Generator,
    difficulty: float = 0.5,
    num_backgrounds: int = 2,
    num_void: int = 0,
    shape_scale: Tuple[float, float] = (0.25, 0.55),
    dominant: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Render one scene.

    Args:
        size (tuple[int, int]): ``(H, W)`` of the image.
        classes (Sequence[int]): Classes of the scene (indices into
            ``appearance``). The first ``num_backgrounds`` are backgrounds,
            the others are shapes.
        appearance (ClassAppearance): Appearance table of the classes.
        rng (np.random.Generator): Random generator of this image.
        difficulty (float): Nuisance strength in [0, 1]. Defaults to 0.5.
        num_backgrounds (int): 1 (one background class) or 2 (two regions
            split by a random slanted line). Defaults to 2.
        num_void (int): Maximum number of small "void" blobs with a random
            appearance, labelled -1. Defaults to 0.
        shape_scale (tuple[float, float]): Range of the shape size as a
            fraction of the image size. Defaults to (0.25, 0.55).
        dominant (bool): Classification mode: ``classes[0]`` is the
            dominant background, and shapes hidden by others are not
            re-drawn. Defaults to False.

    Returns:
        tuple[np.ndarray, np.ndarray]: The ``(H, W, 3)`` uint8 RGB image and
        the ``(H, W)`` int16 label map (class indices, -1 for void).
    """
    height, width = size
    # Worst case: every class re-drawn once, plus the void blobs.
    if 2 * len(classes) + num_void > 255:
        raise ValueError('too many shapes for one scene (at most 255)')
    prm = _difficulty_params(difficulty)
    num_backgrounds = min(num_backgrounds, len(classes))
    inst_cls = list(classes[:num_backgrounds])
    inst = np.zeros((height, width), np.uint8)
    if num_backgrounds == 2:
        # Second background below a slanted line (e.g. sky over road).
        y0, y1 = rng.uniform(0.3, 0.7, 2) * height
        pts = np.array(
            [[0, y0], [width - 1, y1], [width - 1, height], [0, height]]
        )
        cv2.fillPoly(inst, [np.round(pts).astype(np.int32)], (1,))

    shapes = list(classes[num_backgrounds:])
    order = rng.permutation(len(shapes))
    for k in order:
        inst_cls.append(shapes[k])
        _draw_shape(inst, len(inst_cls) - 1, rng, shape_scale)

    # Re-draw, on top, any scheduled class that ended up (almost) hidden.
    min_pixels = max(16, int(0.01 * height * width))
    if not dominant:
        cls_arr = np.asarray(inst_cls)
        counts = np.bincount(cls_arr[inst].ravel(), minlength=len(appearance))
        for c in dict.fromkeys(classes):
            if counts[c] < min_pixels:
                inst_cls.append(c)
                _draw_shape(
                    inst,
                    len(inst_cls) - 1,
                    rng,
                    (0.25, 0.35),
                    rng.choice(('rect', 'ellipse')),
                )

    num_voids = int(rng.integers(0, num_void + 1)) if num_void else 0
    for _ in range(num_voids):
        inst_cls.append(-1)
        _draw_shape(inst, len(inst_cls) - 1, rng, (0.06, 0.14), 'ellipse')

    inst_cls = np.asarray(inst_cls, np.int64)
    label = inst_cls[inst].astype(np.int16)

    # Per-instance base colour: class mean (with contrast), a colour offset
    # and a brightness gain; void blobs get a random colour.
    grey = np.float32(128.0)
    num_inst = len(inst_cls)
    base = np.empty((num_inst, 3), np.float32)
    valid = inst_cls >= 0
    base[valid] = (
        grey + (appearance.mean[inst_cls[valid]] - grey) * prm['contrast']
    )
    base[~valid] = rng.uniform(30, 225, (int((~valid).sum()), 3))
    base += rng.normal(0, prm['shape_shift'], (num_inst, 3))
    base *= 1 + rng.uniform(-1, 1, (num_inst, 1)) * prm['shape_gain']
    base = base.astype(np.float32)

    # Class textures (one phase per class and image): a scalar pattern per
    # pixel that modulates the colour along the direction of its class.
    tex_map = np.zeros((height, width), np.float32)
    amp = np.zeros((num_inst, 3), np.float32)
    for c in np.unique(inst_cls):
        if c < 0:
            tex = _texture('grain', 4.0, 0.0, height, width, rng)
            amp[inst_cls == c] = 40.0 * rng.normal(size=3)
        else:
            period = appearance.period[c] * (
                1 + rng.uniform(-1, 1) * prm['period_jitter']
            )
            angle = (
                appearance.angle[c] + rng.uniform(-1, 1) * prm['angle_jitter']
            )
            tex = _texture(
                appearance.texture[c],
                float(period),
                float(angle),
                height,
                width,
                rng,
            )
            amp[inst_cls == c] = (
                appearance.amplitude[c] * appearance.direction[c]
            )
        np.copyto(tex_map, tex, where=label == c)
    image = base[inst]
    image += tex_map[..., None] * amp[inst]

    # Global nuisances: brightness, colour cast and pixel noise.
    gain = 1 + rng.uniform(-1, 1) * prm['global_gain']
    cast = rng.normal(0, prm['cast'], 3).astype(np.float32)
    image = image * np.float32(gain) + cast
    image += rng.standard_normal(image.shape, np.float32) * np.float32(
        prm['noise']
    )
    image = np.clip(image + np.float32(0.5), 0, 255).astype(np.uint8)
    return image, label


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


def _prepare(
    root: str,
    params: dict,
    subdirs: Sequence[str],
    num_files: int,
    force: bool,
    manifest_name: str = MANIFEST_NAME,
) -> Optional[dict]:
    """Handle the manifest: return it if the dataset is up to date.

    Otherwise remove the stale generated sub-directories (only when the
    root holds one of our manifests, or ``force`` is set) and return None.
    Shared with :mod:`.digits`, which passes its own ``manifest_name``.
    """
    manifest_path = osp.join(root, manifest_name)
    old = None
    if osp.isfile(manifest_path):
        try:
            with open(manifest_path, encoding='utf-8') as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = {}
    if (
        old is not None
        and not force
        and old.get('params') == params
        and _count_files(root, subdirs) == num_files
    ):
        return old
    existing = [
        d
        for d in subdirs
        if osp.isdir(osp.join(root, d)) and os.listdir(osp.join(root, d))
    ]
    if existing and old is None and not force:
        raise FileExistsError(
            f'{root} already holds {existing} but no {manifest_name}; '
            'pass force=True to overwrite it'
        )
    if osp.isfile(manifest_path):
        os.remove(manifest_path)
    for d in subdirs:
        shutil.rmtree(osp.join(root, d), ignore_errors=True)
    return None


def _count_files(root: str, subdirs: Sequence[str]) -> int:
    total = 0
    for d in subdirs:
        for _, _, files in os.walk(osp.join(root, d)):
            total += len(files)
    return total


def _finish(
    root: str,
    params: dict,
    summary: dict,
    manifest_name: str = MANIFEST_NAME,
) -> dict:
    manifest = dict(params=params, summary=summary)
    tmp = osp.join(root, manifest_name + '.tmp')
    with open(tmp, 'w', encoding='utf-8') as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, osp.join(root, manifest_name))
    return manifest


def _result(manifest: dict, skipped: bool, seconds: float) -> dict:
    out = dict(manifest['summary'])
    out['skipped'] = skipped
    out['seconds'] = round(seconds, 3)
    return out


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
    start = time.perf_counter()
    size = _check_size(size)
    params = dict(
        layout='cityscapes',
        version=GENERATOR_VERSION,
        num_train=int(num_train),
        num_val=int(num_val),
        size=list(size),
        seed=int(seed),
        difficulty=float(difficulty),
        num_shapes=int(num_shapes),
        ignore_width=int(ignore_width),
        num_void=int(num_void),
    )
    subdirs = ('leftImg8bit', 'gtFine')
    counts = dict(train=int(num_train), val=int(num_val))
    old = _prepare(root, params, subdirs, 2 * sum(counts.values()), force)
    if old is not None:
        return _result(old, True, time.perf_counter() - start)

    num_classes = len(CITYSCAPES_CLASSES)
    appearance = class_appearance(num_classes, _APPEARANCE_SEEDS['cityscapes'])
    cities = dict(train=_CITYSCAPES_TRAIN_CITIES, val=_CITYSCAPES_VAL_CITIES)
    class_pixels, ignore_pixels = {}, {}
    for split, num in counts.items():
        hist = np.zeros(num_classes + 1, np.int64)
        for d in subdirs:
            for city in cities[split]:
                os.makedirs(osp.join(root, d, split, city), exist_ok=True)
        for i in range(num):
            rng = _image_rng(seed, split, i)
            classes = _class_schedule(
                num_classes, num_shapes + 2, i, seed, split
            )
            image, label = render_scene(
                size,
                classes,
                appearance,
                rng,
                difficulty,
                num_backgrounds=2,
                num_void=num_void,
            )
            label = label.astype(np.int64)
            if ignore_width > 0:
                label[_boundary_mask(label, ignore_width)] = -1
            label = np.where(label < 0, 255, label).astype(np.uint8)
            city = cities[split][i % len(cities[split])]
            stem = f'{city}_{i:06d}_000019'
            _write_png(
                osp.join(
                    root, 'leftImg8bit', split, city, stem + '_leftImg8bit.png'
                ),
                image,
            )
            _write_png(
                osp.join(
                    root,
                    'gtFine',
                    split,
                    city,
                    stem + '_gtFine_labelTrainIds.png',
                ),
                label,
            )
            hist += np.bincount(
                np.minimum(label.ravel(), num_classes),
                minlength=num_classes + 1,
            )
        class_pixels[split] = hist[:num_classes].tolist()
        ignore_pixels[split] = int(hist[num_classes])
    summary = dict(
        root=osp.abspath(root),
        layout='cityscapes',
        classes=list(CITYSCAPES_CLASSES),
        palette=[list(p) for p in CITYSCAPES_PALETTE],
        num_train=counts['train'],
        num_val=counts['val'],
        size=list(size),
        img_dirs={s: f'leftImg8bit/{s}' for s in counts},
        ann_dirs={s: f'gtFine/{s}' for s in counts},
        class_pixels=class_pixels,
        ignore_pixels=ignore_pixels,
    )
    manifest = _finish(root, params, summary)
    return _result(manifest, False, time.perf_counter() - start)


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
    start = time.perf_counter()
    size = _check_size(size)
    used = (
        ADE20K_NUM_CLASSES
        if num_used_classes is None
        else int(num_used_classes)
    )
    if not 1 <= used <= ADE20K_NUM_CLASSES:
        raise ValueError(f'num_used_classes must be in [1, 150], got {used}')
    params = dict(
        layout='ade20k',
        version=GENERATOR_VERSION,
        num_train=int(num_train),
        num_val=int(num_val),
        size=list(size),
        seed=int(seed),
        difficulty=float(difficulty),
        num_used_classes=used,
        num_shapes=int(num_shapes),
        num_other=int(num_other),
        jpeg_quality=int(jpeg_quality),
    )
    subdirs = ('images', 'annotations')
    splits = dict(
        train=('training', 'ADE_train', int(num_train)),
        val=('validation', 'ADE_val', int(num_val)),
    )
    total = 2 * (int(num_train) + int(num_val))
    old = _prepare(root, params, subdirs, total, force)
    if old is not None:
        return _result(old, True, time.perf_counter() - start)

    appearance = class_appearance(used, _APPEARANCE_SEEDS['ade20k'])
    class_pixels = {}
    for split, (dirname, prefix, num) in splits.items():
        hist = np.zeros(ADE20K_NUM_CLASSES + 1, np.int64)
        for d in subdirs:
            os.makedirs(osp.join(root, d, dirname), exist_ok=True)
        for i in range(num):
            rng = _image_rng(seed, split, i)
            classes = _class_schedule(used, num_shapes + 1, i, seed, split)
            image, label = render_scene(
                size,
                classes,
                appearance,
                rng,
                difficulty,
                num_backgrounds=1,
                num_void=num_other,
            )
            # Class index k -> label k + 1; void (-1) -> 0 ("other").
            label = (label + 1).astype(np.uint8)
            stem = f'{prefix}_{i + 1:08d}'
            _write_jpg(
                osp.join(root, 'images', dirname, stem + '.jpg'),
                image,
                jpeg_quality,
            )
            _write_png(
                osp.join(root, 'annotations', dirname, stem + '.png'), label
            )
            hist += np.bincount(
                label.ravel(), minlength=ADE20K_NUM_CLASSES + 1
            )
        class_pixels[split] = hist.tolist()
    summary = dict(
        root=osp.abspath(root),
        layout='ade20k',
        num_used_classes=used,
        num_train=splits['train'][2],
        num_val=splits['val'][2],
        size=list(size),
        img_dirs={s: f'images/{v[0]}' for s, v in splits.items()},
        ann_dirs={s: f'annotations/{v[0]}' for s, v in splits.items()},
        class_pixels=class_pixels,
    )
    manifest = _finish(root, params, summary)
    return _result(manifest, False, time.perf_counter() - start)


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
    start = time.perf_counter()
    size = _check_size(size)
    if num_classes < 2:
        raise ValueError(f'num_classes must be >= 2, got {num_classes}')
    params = dict(
        layout='imagefolder',
        version=GENERATOR_VERSION,
        num_classes=int(num_classes),
        per_class_train=int(per_class_train),
        per_class_val=int(per_class_val),
        size=list(size),
        seed=int(seed),
        difficulty=float(difficulty),
        num_distractors=int(num_distractors),
    )
    subdirs = ('train', 'val')
    per_class = dict(train=int(per_class_train), val=int(per_class_val))
    total = num_classes * sum(per_class.values())
    old = _prepare(root, params, subdirs, total, force)
    if old is not None:
        return _result(old, True, time.perf_counter() - start)

    appearance = class_appearance(
        num_classes, _APPEARANCE_SEEDS['imagefolder']
    )
    names = [f'class_{c:03d}' for c in range(num_classes)]
    for split, num in per_class.items():
        for c, name in enumerate(names):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for j in range(num):
                index = c * num + j
                rng = _image_rng(seed, split, index)
                others = [k for k in range(num_classes) if k != c]
                distract = rng.choice(
                    others, int(rng.integers(0, num_distractors + 1))
                )
                image, _ = render_scene(
                    size,
                    [c] + [int(k) for k in distract],
                    appearance,
                    rng,
                    difficulty,
                    num_backgrounds=1,
                    shape_scale=(0.15, 0.35),
                    dominant=True,
                )
                _write_png(osp.join(folder, f'{j:05d}.png'), image)
    summary = dict(
        root=osp.abspath(root),
        layout='imagefolder',
        classes=names,
        num_train=num_classes * per_class['train'],
        num_val=num_classes * per_class['val'],
        size=list(size),
        img_dirs={s: s for s in per_class},
    )
    manifest = _finish(root, params, summary)
    return _result(manifest, False, time.perf_counter() - start)
