# m-RevNet-V1c-18: basic blocks, 512 output channels. mmpretrain has no
# ResNetV1c-18 config; the recipe is the one of ResNetV1c-50.
_base_ = './mrevnetv1c50_8xb32_in1k.py'
model = dict(backbone=dict(depth=18), head=dict(in_channels=512))
