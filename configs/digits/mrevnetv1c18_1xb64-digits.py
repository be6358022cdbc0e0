# m-RevNet-V1c-18 on the digits: the recipe of resnetv1c18_1xb64-digits.py
# (data, schedule, optimizer, seed: all inherited), only the backbone
# differs. Its settings are those of ../_base_/models/mrevnet_v1c.py, as in
# the ImageNet and segmentation configs.
_base_ = [
    './resnetv1c18_1xb64-digits.py',
    '../_base_/models/mrevnet_v1c.py',
]
custom_imports = dict(imports=['mmrevnet'], allow_failed_imports=False)
model = dict(
    backbone=dict(
        _base_.mrevnet_v1c,
        _delete_=True,
        depth=18,
        num_stages=4,
        out_indices=(3,),
        style='pytorch',
    ),
)
