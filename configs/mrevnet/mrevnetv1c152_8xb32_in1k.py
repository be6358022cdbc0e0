_base_ = './mrevnetv1c50_8xb32_in1k.py'
model = dict(backbone=dict(depth=152))
