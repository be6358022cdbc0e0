_base_ = [
    'mmseg::pspnet/pspnet_r101-d8_4xb4-160k_ade20k-512x512.py',
    '../_base_/models/mrevnet_v1c.py',
]
model = dict(backbone=_base_.mrevnet_v1c)
