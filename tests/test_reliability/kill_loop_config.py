# The kill-loop test's training config (tests/test_reliability/fault_toy.py).
custom_imports = dict(imports=['test_reliability.fault_toy'])
default_scope = None
model = dict(type='KillLoopToyModel')
train_dataloader = dict(
    dataset=dict(type='KillLoopToyDataset'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='pseudo_collate'),
    batch_size=4,
    num_workers=0,
)
train_cfg = dict(type='IterBasedTrainLoop', max_iters=100000)
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(
        type='CheckpointHook', interval=1, by_epoch=False, max_keep_ckpts=3
    ),
)
launcher = 'none'
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
log_level = 'INFO'
