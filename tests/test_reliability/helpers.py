"""Shared pieces of the reliability tests (tiny generated data, CPU)."""

import os.path as osp
import socket
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

#: The CPU demo (PSPNet + narrow MRevNetV1c-34) and its ResNetV1c-34 twin.
DEMO_CONFIG = osp.join(
    REPO,
    'configs/demo/'
    'pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-128x256.py',
)
RESNET_CONFIG = osp.join(
    REPO,
    'configs/demo/pspnet_r34-d8_1xb8-300iter_synthetic-cityscapes-128x256.py',
)

#: Generated Cityscapes-layout data: four 64x128 training images.
DATA = dict(num_train=4, num_val=2, size=(64, 128), seed=0)
SIZE = DATA['size']


def tiny_options(data_root: str, max_iters: int, batch_size: int) -> Dict:
    """Overrides that make the demo config test sized (no validation).

    Every value is a scalar or a tuple, so that the same options go
    through ``Config.merge_from_dict`` and, rendered by
    :func:`cli_options`, through ``--cfg-options``.
    """
    options = {
        'model.data_preprocessor.size': SIZE,
        'train_dataloader.batch_size': batch_size,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_cfg.max_iters': max_iters,
        # The loop validates at max_iters unless val_begin is beyond it.
        'train_cfg.val_begin': max_iters + 1,
        'train_cfg.val_interval': max_iters + 1,
        'default_hooks.logger.interval': 1,
    }
    for split in ('val', 'test'):
        options[f'{split}_dataloader.num_workers'] = 0
        options[f'{split}_dataloader.persistent_workers'] = False
        options[f'{split}_dataloader.dataset.data_root'] = data_root
    return options


def _render(value) -> str:
    if isinstance(value, tuple):
        return '(' + ','.join(_render(v) for v in value) + ')'
    return str(value)


def cli_options(options: Dict) -> List[str]:
    """``key=value`` arguments of ``--cfg-options``."""
    return [f'{key}={_render(value)}' for key, value in options.items()]


def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
