from .mrevnet import (
    MomentumBasicBlock,
    MomentumBottleneck,
    MomentumResLayer,
    MRevNet,
    MRevNetV1c,
    MRevNetV1d,
)

__all__ = [
    'MRevNet',
    'MRevNetV1c',
    'MRevNetV1d',
    'MomentumResLayer',
    'MomentumBasicBlock',
    'MomentumBottleneck',
]
