# The demo's baseline: the same PSPNet and recipe with mmseg's ResNetV1c-34.
_base_ = './pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-128x256.py'
model = dict(
    backbone=dict(
        _delete_=True,
        type='ResNetV1c',
        depth=34,
        stem_channels=32,
        base_channels=16,
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        contract_dilation=True,
        norm_cfg=dict(type='BN', requires_grad=True),
    )
)
