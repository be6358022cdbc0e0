"""Procedural scenes: class appearances, shapes and the scene renderer.

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

:mod:`.synthetic` writes these scenes in real dataset layouts. This module
only depends on numpy and OpenCV (no torch, no OpenMMLab).
"""

import functools
import math
from typing import Dict, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ['ClassAppearance', 'class_appearance', 'render_scene']

_TEXTURES = ('stripes', 'checker', 'dots', 'waves', 'grain')


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
