# m-RevNet-V1c-50 on ImageNet-1k: mmpretrain's ResNetV1c-50 recipe (8 GPUs x
# 32 images, SGD lr 0.1, 100 epochs, step decay) with the backbone swapped.
# The backbone settings (gamma, memory_saving, residual_fn) come from
# ../_base_/models/mrevnet_v1c.py, the file the segmentation configs use, so
# that a checkpoint of this config is the backbone the segmentors expect
# (init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')).
_base_ = [
    'mmpretrain::resnet/resnetv1c50_8xb32_in1k.py',
    '../_base_/models/mrevnet_v1c.py',
]
custom_imports = dict(imports=['mmrevnet'], allow_failed_imports=False)
model = dict(
    # `_delete_` drops every argument of mmpretrain's ResNetV1c, so that the
    # backbone only gets arguments that MRevNetV1c knows.
    backbone=dict(
        _base_.mrevnet_v1c,
        _delete_=True,
        depth=50,
        num_stages=4,
        out_indices=(3,),
        style='pytorch',
    ),
)
