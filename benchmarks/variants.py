"""The segmentor of an mmseg config with ResNetV1c or m-RevNet backbones.

Shared by the studies that compare the backbones on a config's whole
segmentor (``tools/analysis_tools/max_fit.py``, :mod:`benchmarks.frontier`,
``tools/analysis_tools/plan_memory.py``): the config's model, crop, batch
and optimizer; the model with another backbone; built with its optimizer.
"""

import copy
from typing import Tuple

import torch

#: Backbone keys of m-RevNet that mmseg's ResNetV1c does not take.
MREVNET_ONLY = (
    'gamma',
    'memory_saving',
    'residual_fn',
    'track_drift',
    'max_amplification',
    'drop_path_rate',
    'stored_blocks',
    'store_stem',
    'memory_budget',
    'expansion',
)


def load_config(path: str):
    """``(model, crop, batch, optimizer)`` configs of an mmseg config.

    The model without data preprocessor, pretrained weights or SyncBN.
    """
    from mmengine.config import Config

    from tools.cli.config import sync_bn_to_bn

    cfg = Config.fromfile(path)
    model = copy.deepcopy(cfg.model.to_dict())
    model.pop('data_preprocessor', None)
    model['pretrained'] = None
    model['backbone'].pop('init_cfg', None)
    model['backbone'].pop('pretrained', None)
    sync_bn_to_bn(model)
    crop = tuple(cfg.get('crop_size') or model_crop(cfg))
    batch = int(cfg.train_dataloader.batch_size)
    optimizer = dict(cfg.optim_wrapper.optimizer)
    return model, crop, batch, optimizer


def model_crop(cfg) -> Tuple[int, int]:
    size = cfg.model.get('data_preprocessor', {}).get('size')
    if not size:
        raise ValueError(
            f'{cfg.filename}: no crop_size and no data_preprocessor.size: '
            'the crop to fit is unknown'
        )
    return tuple(size)


def variant_model(model_cfg: dict, variant: str) -> dict:
    """The config's segmentor with the backbone of ``variant``."""
    cfg = copy.deepcopy(model_cfg)
    cfg.pop('memory_budget', None)
    backbone = cfg['backbone']
    if variant == 'm-RevNet':
        if 'MRevNet' not in backbone['type']:
            backbone['type'] = backbone['type'].replace('ResNet', 'MRevNet')
        for key in ('stored_blocks', 'store_stem', 'memory_budget', 'with_cp'):
            backbone.pop(key, None)
        backbone['memory_saving'] = True
        if cfg['type'] == 'EncoderDecoder':
            cfg['type'] = 'MRevNetEncoderDecoder'
        return cfg
    backbone['type'] = backbone['type'].replace('MRevNet', 'ResNet')
    for key in MREVNET_ONLY:
        backbone.pop(key, None)
    backbone['with_cp'] = 'with_cp' in variant
    if cfg['type'] == 'MRevNetEncoderDecoder':
        cfg['type'] = 'EncoderDecoder'
        for key in ('memory_saving_heads', 'concat_free', 'loss_bands'):
            cfg.pop(key, None)
    return cfg


def build_with_optimizer(
    model_cfg: dict, optimizer_cfg: dict, device: str = 'cpu'
):
    """The model on ``device`` in training mode (seed 0), its optimizer."""
    from mmengine.registry import OPTIMIZERS, init_default_scope
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg)).to(device).train()
    optimizer = OPTIMIZERS.build(
        dict(optimizer_cfg, params=model.parameters())
    )
    return model, optimizer
