"""Helpers of the tool tests: shipped configs made CPU and test sized.

The shipped segmentation configs (``configs/{pspnet,deeplabv3,upernet}``)
are trained for a couple of iterations on the CPU with ``--cfg-options``
style overrides only (:func:`tiny_options`): a narrow m-RevNet-18 (same
stages, outputs 16/32/64/128 channels), BN instead of SyncBN, no ImageNet
weights, generated data in the real Cityscapes / ADE20K layouts, small crops
and no dataloader workers. The pipelines keep their shipped transforms; only
their sizes are overridden, by list index.

The fixtures that generate the data and train are in ``conftest.py``.
"""

import os.path as osp
from typing import Dict, List, Optional

from mmengine.config import Config
from mmengine.hooks import Hook

import mmrevnet  # noqa: F401  (compat shims before mmseg)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: Shipped config of each (head config family, layout).
CONFIGS = {
    ('pspnet', 'cityscapes'): (
        'configs/pspnet/pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'
    ),
    ('pspnet', 'ade20k'): (
        'configs/pspnet/pspnet_mrevnet50-d8_4xb4-160k_ade20k-512x512.py'
    ),
    ('deeplabv3', 'cityscapes'): (
        'configs/deeplabv3/'
        'deeplabv3_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'
    ),
    ('deeplabv3', 'ade20k'): (
        'configs/deeplabv3/deeplabv3_mrevnet50-d8_4xb4-160k_ade20k-512x512.py'
    ),
    ('upernet', 'cityscapes'): (
        'configs/upernet/upernet_mrevnet50_4xb2-80k_cityscapes-512x1024.py'
    ),
    ('upernet', 'ade20k'): (
        'configs/upernet/upernet_mrevnet50_4xb4-160k_ade20k-512x512.py'
    ),
}

#: Decode head type expected in each family.
HEADS = {'pspnet': 'PSPHead', 'deeplabv3': 'ASPPHead', 'upernet': 'UPerHead'}

#: Generated data: (H, W) and counts. ADE20K uses 6 of its 150 labels.
CITYSCAPES_DATA = dict(num_train=8, num_val=4, size=(64, 128), seed=0)
ADE20K_DATA = dict(
    num_train=8, num_val=4, size=(64, 64), seed=0, num_used_classes=6
)

#: Tiny backbone: m-RevNet-V1c-18 with 16 base channels.
TINY_BACKBONE = dict(depth=18, stem_channels=16, base_channels=16)
#: Its output channels (stages 0..3).
TINY_CHANNELS = [16, 32, 64, 128]
CROP = (64, 64)
#: Resize scale (w, h) of the test pipeline and base scale of the train
#: pipeline's RandomResize: the generated images keep their size.
SCALES = {'cityscapes': (128, 64), 'ade20k': (256, 64)}
#: Transforms expected at the overridden pipeline indices.
TRAIN_PIPELINE = {2: 'RandomResize', 3: 'RandomCrop'}
TEST_PIPELINE = {1: 'Resize'}
MAX_ITERS = 2


def config_path(head: str, layout: str) -> str:
    return osp.join(REPO, CONFIGS[(head, layout)])


def tiny_options(
    head: str, layout: str, data_root: str, name: Optional[str] = None
) -> Dict:
    """``--cfg-options`` that make a shipped config CPU and test sized.

    Every value is a scalar, a tuple or a list of scalars, so that the same
    options go through ``Config.merge_from_dict`` and, rendered by
    :func:`cli_options`, through ``tools/*.py --cfg-options``.

    Args:
        head (str): 'pspnet', 'deeplabv3' or 'upernet'.
        layout (str): 'cityscapes' or 'ade20k'.
        data_root (str): Root of the generated data set.
        name (str, optional): Unique visualizer name (mmengine keeps one
            visualizer instance per name and process).

    Returns:
        dict: Flat ``key=value`` overrides.
    """
    width = TINY_CHANNELS
    decode_in = width if head == 'upernet' else width[3]
    options = {
        'model.pretrained': None,
        'model.data_preprocessor.size': CROP,
        'model.backbone.norm_cfg.type': 'BN',
        'model.decode_head.in_channels': decode_in,
        'model.decode_head.channels': 16,
        'model.decode_head.norm_cfg.type': 'BN',
        'model.auxiliary_head.in_channels': width[2],
        'model.auxiliary_head.channels': 8,
        'model.auxiliary_head.norm_cfg.type': 'BN',
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_dataloader.dataset.pipeline.2.scale': SCALES[layout],
        'train_dataloader.dataset.pipeline.3.crop_size': CROP,
        'train_cfg.max_iters': MAX_ITERS,
        'train_cfg.val_interval': MAX_ITERS,
        'default_hooks.checkpoint.interval': MAX_ITERS,
        'default_hooks.logger.interval': 1,
    }
    for key, value in TINY_BACKBONE.items():
        options[f'model.backbone.{key}'] = value
    for split in ('val', 'test'):
        options.update(
            {
                f'{split}_dataloader.num_workers': 0,
                f'{split}_dataloader.persistent_workers': False,
                f'{split}_dataloader.dataset.data_root': data_root,
                f'{split}_dataloader.dataset.pipeline.1.scale': (
                    SCALES[layout]
                ),
            }
        )
    if name is not None:
        options['visualizer.name'] = name
    return options


def _render(value) -> str:
    if isinstance(value, (list, tuple)):
        inner = ','.join(_render(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner})'
    return str(value)


def cli_options(options: Dict) -> List[str]:
    """``--cfg-options`` arguments (``key=value``) of ``options``."""
    args = []
    for key, value in options.items():
        rendered = _render(value)
        if isinstance(value, str):
            assert ',' not in value and '[' not in value, value
        args.append(f'{key}={rendered}')
    return args


def check_pipelines(cfg: Config) -> None:
    """The overridden pipeline indices hold the expected transforms.

    ADE20K's annotations keep ``reduce_zero_label=True`` (label 0 is
    "other", ignored), as in mmseg's ADE20K config.
    """
    ade20k = cfg.train_dataloader.dataset.type == 'ADE20KDataset'
    for split, expected in (
        ('train', TRAIN_PIPELINE),
        ('val', TEST_PIPELINE),
        ('test', TEST_PIPELINE),
    ):
        pipeline = cfg[f'{split}_dataloader'].dataset.pipeline
        for index, type_ in expected.items():
            assert pipeline[index]['type'] == type_, (split, pipeline)
        loads = [t for t in pipeline if t['type'] == 'LoadAnnotations']
        assert len(loads) == 1, (split, pipeline)
        assert loads[0].get('reduce_zero_label', False) == ade20k, split


def no_syncbn(cfg) -> bool:
    """True when no ``SyncBN`` is left anywhere in ``cfg``."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            return False
        return all(no_syncbn(v) for v in cfg.values())
    if isinstance(cfg, (list, tuple)):
        return all(no_syncbn(v) for v in cfg)
    return True


def run_tool(args: List[str], timeout: int = 300):
    """Run ``python <args>`` from the repository root as a child of the
    test process's tool server (``tests/tool_process.py``: torch, mmengine
    and mmseg imported once); asserts exit 0 and returns the output."""
    from tool_process import run_tools

    (result,) = run_tools([args], timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


class MetricsCatcher(Hook):
    """Hook recording the metrics of every validation epoch."""

    priority = 'VERY_LOW'

    def __init__(self):
        self.val_metrics = []

    def after_val_epoch(self, runner, metrics=None):
        self.val_metrics.append(dict(metrics or {}))
