# The m-RevNet backbone that replaces mmseg's ResNetV1c in the configs of
# this folder. Inherit this file next to an mmseg config and set
# ``model = dict(backbone=_base_.mrevnet_v1c)``; depth, strides, dilations,
# norm_cfg and out_indices come from the mmseg config.
custom_imports = dict(imports=['mmrevnet'], allow_failed_imports=False)
# mmengine's Runner, reading checkpoints (resume, load_from, Pretrained) with
# torch.load(weights_only=True) and the objects mmengine writes allowed only
# while it reads them (mmrevnet/engine/checkpoint.py).
runner_type = 'MRevNetRunner'
mrevnet_v1c = dict(
    type='MRevNetV1c',
    gamma=0.9,
    memory_saving=True,
    # F(x) = block(x) - x: the ImageNet ResNetV1c weights that mmseg's
    # `pretrained` points to keep their meaning inside each block.
    residual_fn='block',
)
