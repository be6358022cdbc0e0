_base_ = [
    'mmseg::pspnet/pspnet_r101-d8_4xb2-80k_cityscapes-512x1024.py',
    '../_base_/models/mrevnet_v1c.py',
]
model = dict(backbone=_base_.mrevnet_v1c)
