crop_size = (
    512,
    1024,
)
custom_imports = dict(
    allow_failed_imports=False,
    imports=[
        'mmrevnet',
    ],
)
data_preprocessor = dict(
    _scope_='mmseg',
    bgr_to_rgb=True,
    mean=[
        123.675,
        116.28,
        103.53,
    ],
    pad_val=0,
    seg_pad_val=255,
    size=(
        512,
        1024,
    ),
    std=[
        58.395,
        57.12,
        57.375,
    ],
    type='SegDataPreProcessor',
)
data_root = 'data/cityscapes/'
dataset_type = 'CityscapesDataset'
default_hooks = dict(
    checkpoint=dict(
        _scope_='mmseg', by_epoch=False, interval=2, type='CheckpointHook'
    ),
    logger=dict(
        _scope_='mmseg',
        interval=1,
        log_metric_by_epoch=False,
        type='LoggerHook',
    ),
    param_scheduler=dict(_scope_='mmseg', type='ParamSchedulerHook'),
    sampler_seed=dict(_scope_='mmseg', type='DistSamplerSeedHook'),
    timer=dict(_scope_='mmseg', type='IterTimerHook'),
    visualization=dict(_scope_='mmseg', type='SegVisualizationHook'),
)
default_scope = 'mmseg'
env_cfg = dict(
    cudnn_benchmark=True,
    dist_cfg=dict(backend='nccl'),
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
)
img_ratios = [
    0.5,
    0.75,
    1.0,
    1.25,
    1.5,
    1.75,
]
load_from = None
log_level = 'INFO'
log_processor = dict(by_epoch=False)
model = dict(
    _scope_='mmseg',
    auxiliary_head=dict(
        align_corners=False,
        channels=8,
        concat_input=False,
        dropout_ratio=0.1,
        in_channels=64,
        in_index=2,
        loss_decode=dict(
            loss_weight=0.4, type='CrossEntropyLoss', use_sigmoid=False
        ),
        norm_cfg=dict(requires_grad=True, type='BN'),
        num_classes=19,
        num_convs=1,
        type='FCNHead',
    ),
    backbone=dict(
        base_channels=16,
        contract_dilation=True,
        depth=18,
        dilations=(
            1,
            1,
            2,
            4,
        ),
        gamma=0.9,
        memory_saving=True,
        norm_cfg=dict(requires_grad=True, type='BN'),
        norm_eval=False,
        num_stages=4,
        out_indices=(
            0,
            1,
            2,
            3,
        ),
        residual_fn='block',
        stem_channels=16,
        strides=(
            1,
            2,
            1,
            1,
        ),
        style='pytorch',
        type='MRevNetV1c',
    ),
    data_preprocessor=dict(
        bgr_to_rgb=True,
        mean=[
            123.675,
            116.28,
            103.53,
        ],
        pad_val=0,
        seg_pad_val=255,
        size=(
            64,
            64,
        ),
        std=[
            58.395,
            57.12,
            57.375,
        ],
        type='SegDataPreProcessor',
    ),
    decode_head=dict(
        align_corners=False,
        channels=16,
        dropout_ratio=0.1,
        in_channels=128,
        in_index=3,
        loss_decode=dict(
            loss_weight=1.0, type='CrossEntropyLoss', use_sigmoid=False
        ),
        norm_cfg=dict(requires_grad=True, type='BN'),
        num_classes=19,
        pool_scales=(
            1,
            2,
            3,
            6,
        ),
        type='PSPHead',
    ),
    pretrained=None,
    test_cfg=dict(mode='whole'),
    train_cfg=dict(),
    type='EncoderDecoder',
)
mrevnet_v1c = dict(
    gamma=0.9, memory_saving=True, residual_fn='block', type='MRevNetV1c'
)
norm_cfg = dict(_scope_='mmseg', requires_grad=True, type='SyncBN')
optim_wrapper = dict(
    _scope_='mmseg',
    clip_grad=None,
    optimizer=dict(lr=0.01, momentum=0.9, type='SGD', weight_decay=0.0005),
    type='OptimWrapper',
)
optimizer = dict(
    _scope_='mmseg', lr=0.01, momentum=0.9, type='SGD', weight_decay=0.0005
)
param_scheduler = [
    dict(
        _scope_='mmseg',
        begin=0,
        by_epoch=False,
        end=80000,
        eta_min=0.0001,
        power=0.9,
        type='PolyLR',
    ),
]
resume = False
runner_type = 'MRevNetRunner'
test_cfg = dict(_scope_='mmseg', type='TestLoop')
test_dataloader = dict(
    batch_size=1,
    dataset=dict(
        _scope_='mmseg',
        data_prefix=dict(
            img_path='leftImg8bit/val', seg_map_path='gtFine/val'
        ),
        data_root='/tmp/c27/after/cityscapes',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(
                keep_ratio=True,
                scale=(
                    128,
                    64,
                ),
                type='Resize',
            ),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs'),
        ],
        type='CityscapesDataset',
    ),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmseg', shuffle=False, type='DefaultSampler'),
)
test_evaluator = dict(
    _scope_='mmseg',
    iou_metrics=[
        'mIoU',
    ],
    type='IoUMetric',
)
test_pipeline = [
    dict(_scope_='mmseg', type='LoadImageFromFile'),
    dict(
        _scope_='mmseg',
        keep_ratio=True,
        scale=(
            2048,
            1024,
        ),
        type='Resize',
    ),
    dict(_scope_='mmseg', type='LoadAnnotations'),
    dict(_scope_='mmseg', type='PackSegInputs'),
]
train_cfg = dict(
    _scope_='mmseg', max_iters=2, type='IterBasedTrainLoop', val_interval=2
)
train_dataloader = dict(
    batch_size=2,
    dataset=dict(
        _scope_='mmseg',
        data_prefix=dict(
            img_path='leftImg8bit/train', seg_map_path='gtFine/train'
        ),
        data_root='/tmp/c27/after/cityscapes',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations'),
            dict(
                keep_ratio=True,
                ratio_range=(
                    0.5,
                    2.0,
                ),
                scale=(
                    128,
                    64,
                ),
                type='RandomResize',
            ),
            dict(
                cat_max_ratio=0.75,
                crop_size=(
                    64,
                    64,
                ),
                type='RandomCrop',
            ),
            dict(prob=0.5, type='RandomFlip'),
            dict(type='PhotoMetricDistortion'),
            dict(type='PackSegInputs'),
        ],
        type='CityscapesDataset',
    ),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmseg', shuffle=True, type='InfiniteSampler'),
)
train_pipeline = [
    dict(_scope_='mmseg', type='LoadImageFromFile'),
    dict(_scope_='mmseg', type='LoadAnnotations'),
    dict(
        _scope_='mmseg',
        keep_ratio=True,
        ratio_range=(
            0.5,
            2.0,
        ),
        scale=(
            2048,
            1024,
        ),
        type='RandomResize',
    ),
    dict(
        _scope_='mmseg',
        cat_max_ratio=0.75,
        crop_size=(
            512,
            1024,
        ),
        type='RandomCrop',
    ),
    dict(_scope_='mmseg', prob=0.5, type='RandomFlip'),
    dict(_scope_='mmseg', type='PhotoMetricDistortion'),
    dict(_scope_='mmseg', type='PackSegInputs'),
]
tta_model = dict(_scope_='mmseg', type='SegTTAModel')
tta_pipeline = [
    dict(_scope_='mmseg', backend_args=None, type='LoadImageFromFile'),
    dict(
        _scope_='mmseg',
        transforms=[
            [
                dict(keep_ratio=True, scale_factor=0.5, type='Resize'),
                dict(keep_ratio=True, scale_factor=0.75, type='Resize'),
                dict(keep_ratio=True, scale_factor=1.0, type='Resize'),
                dict(keep_ratio=True, scale_factor=1.25, type='Resize'),
                dict(keep_ratio=True, scale_factor=1.5, type='Resize'),
                dict(keep_ratio=True, scale_factor=1.75, type='Resize'),
            ],
            [
                dict(direction='horizontal', prob=0.0, type='RandomFlip'),
                dict(direction='horizontal', prob=1.0, type='RandomFlip'),
            ],
            [
                dict(type='LoadAnnotations'),
            ],
            [
                dict(type='PackSegInputs'),
            ],
        ],
        type='TestTimeAug',
    ),
]
val_cfg = dict(_scope_='mmseg', type='ValLoop')
val_dataloader = dict(
    batch_size=1,
    dataset=dict(
        _scope_='mmseg',
        data_prefix=dict(
            img_path='leftImg8bit/val', seg_map_path='gtFine/val'
        ),
        data_root='/tmp/c27/after/cityscapes',
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(
                keep_ratio=True,
                scale=(
                    128,
                    64,
                ),
                type='Resize',
            ),
            dict(type='LoadAnnotations'),
            dict(type='PackSegInputs'),
        ],
        type='CityscapesDataset',
    ),
    num_workers=0,
    persistent_workers=False,
    sampler=dict(_scope_='mmseg', shuffle=False, type='DefaultSampler'),
)
val_evaluator = dict(
    _scope_='mmseg',
    iou_metrics=[
        'mIoU',
    ],
    type='IoUMetric',
)
vis_backends = [
    dict(_scope_='mmseg', type='LocalVisBackend'),
]
visualizer = dict(
    _scope_='mmseg',
    name='visualizer',
    type='SegLocalVisualizer',
    vis_backends=[
        dict(type='LocalVisBackend'),
    ],
)
