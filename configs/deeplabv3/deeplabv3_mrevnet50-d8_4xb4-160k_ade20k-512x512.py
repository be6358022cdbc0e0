_base_ = [
    'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-160k_ade20k-512x512.py',
    '../_base_/models/mrevnet_v1c.py',
]
model = dict(backbone=_base_.mrevnet_v1c)
