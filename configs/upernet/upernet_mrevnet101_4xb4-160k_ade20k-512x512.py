_base_ = [
    'mmseg::upernet/upernet_r101_4xb4-160k_ade20k-512x512.py',
    '../_base_/models/mrevnet_v1c.py',
]
model = dict(backbone=_base_.mrevnet_v1c)
