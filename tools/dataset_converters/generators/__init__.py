"""Dataset utilities of mmrevnet (synthetic datasets for tests/demos)."""

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
