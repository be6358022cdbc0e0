"""Synthetic data sets in real layouts, for the tests, demos and studies.

Development tools of the checkout: not shipped in the wheel.
"""

from .synthetic import (
    ADE20K_NUM_CLASSES,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    MANIFEST_NAME,
    class_appearance,
    generate_ade20k,
    generate_cityscapes,
    generate_imagefolder,
    render_scene,
)

__all__ = [
    'ADE20K_NUM_CLASSES',
    'CITYSCAPES_CLASSES',
    'CITYSCAPES_PALETTE',
    'MANIFEST_NAME',
    'class_appearance',
    'generate_ade20k',
    'generate_cityscapes',
    'generate_imagefolder',
    'render_scene',
]
