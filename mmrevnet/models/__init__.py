"""Models registered in MMEngine's root ``MODELS`` registry."""

from .backbones import MRevNet, MRevNetV1c, MRevNetV1d
from .segmentors import MRevNetEncoderDecoder, enable_memory_saving_heads

__all__ = [
    'MRevNet',
    'MRevNetV1c',
    'MRevNetV1d',
    'MRevNetEncoderDecoder',
    'enable_memory_saving_heads',
]
