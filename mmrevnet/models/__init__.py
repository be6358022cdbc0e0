"""Models registered in MMEngine's root ``MODELS`` registry."""

from .backbones import MRevNet, MRevNetV1c, MRevNetV1d

__all__ = ['MRevNet', 'MRevNetV1c', 'MRevNetV1d']
