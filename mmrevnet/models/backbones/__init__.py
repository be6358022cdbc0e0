from ..utils.res_layer import (
    MomentumBasicBlock,
    MomentumBottleneck,
    MomentumResLayer,
)
from .mrevnet import MRevNet, MRevNetV1c, MRevNetV1d

__all__ = [
    'MRevNet',
    'MRevNetV1c',
    'MRevNetV1d',
    'MomentumResLayer',
    'MomentumBasicBlock',
    'MomentumBottleneck',
]
