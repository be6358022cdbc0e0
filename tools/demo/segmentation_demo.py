"""The CPU demo (the README's main job): data, training, mIoU, overlays.

Run by ``tools/run_demo.py`` (``bash tools/demo.sh``). It lives beside its
command, not in the library: it reads the demo configs of this checkout.
"""

import glob
import os.path as osp
import time
import uuid
from typing import Dict, Optional

from mmengine.config import Config

#: The repository root: the demo configs are read from this checkout.
REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = (
    'configs/demo/'
    'pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)
BASELINE_CONFIG = (
    'configs/demo/pspnet_r34-d8_1xb8-300iter_synthetic-cityscapes-128x256.py'
)
#: Size of the generated Cityscapes-layout data set of the demo.
DEMO_DATA = dict(num_train=200, num_val=50, size=(128, 256), seed=0)


def _train_and_test(
    config: str, work_dir: str, data_root: str, max_iters: Optional[int]
) -> Dict:
    from mmengine.registry import RUNNERS

    from tools.cli.config import build_train_config

    options = {
        'train_dataloader.dataset.data_root': data_root,
        'val_dataloader.dataset.data_root': data_root,
        'test_dataloader.dataset.data_root': data_root,
    }
    if not osp.isabs(config) and not osp.exists(config):
        config = osp.join(REPO_ROOT, config)
    cfg = build_train_config(config, work_dir=work_dir, cfg_options=options)
    if max_iters is not None:
        cfg.train_cfg.max_iters = max_iters
        cfg.default_hooks.checkpoint.interval = max_iters
        # A log interval longer than the run logs no scalars at all (no
        # scalars.json, hence no training curve).
        logger = cfg.default_hooks.logger
        logger.interval = min(logger.get('interval', 10), max_iters)
        for scheduler in cfg.param_scheduler:
            scheduler.end = min(scheduler.end, max_iters)
            scheduler.begin = min(scheduler.begin, max(max_iters - 1, 0))
    # Evaluate once, after training, with the test loop (val split).
    cfg.train_cfg.val_interval = cfg.train_cfg.max_iters + 1
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    # mmengine keeps one visualizer per name and process; a second run
    # would otherwise log into the first run's directory.
    cfg.visualizer.name = f'visualizer_{uuid.uuid4().hex}'
    start = time.perf_counter()
    runner = RUNNERS.build(cfg)
    runner.train()
    train_seconds = time.perf_counter() - start
    metrics = runner.test()
    checkpoint = osp.join(work_dir, f'iter_{cfg.train_cfg.max_iters}.pth')
    return dict(
        config=config,
        work_dir=work_dir,
        checkpoint=checkpoint,
        metrics=dict(metrics),
        train_seconds=train_seconds,
        total_seconds=time.perf_counter() - start,
        cfg=cfg,
    )


def run_segmentation_demo(
    work_dir: str = 'work_dirs/demo',
    data_root: str = 'data/synthetic_cityscapes',
    compare: bool = False,
    max_iters: Optional[int] = None,
    num_overlays: int = 4,
    data: Optional[dict] = None,
) -> Dict:
    """Generate data, train and evaluate the demo PSPNet, draw overlays.

    Args:
        work_dir (str): Root of the outputs. Defaults to 'work_dirs/demo'.
        data_root (str): Where the Cityscapes-layout data is generated.
        compare (bool): Also train the ResNetV1c baseline with the same
            recipe. Defaults to False.
        max_iters (int, optional): Override the configs' iterations.
        num_overlays (int): Validation images to paint. Defaults to 4.
        data (dict, optional): Overrides of :data:`DEMO_DATA`.

    Returns:
        dict: ``data`` (generator summary), ``runs`` (per model: metrics,
        checkpoint, seconds), ``overlays`` (files), ``curve`` (PNG).
    """
    from tools.dataset_converters.generators.synthetic import (
        generate_cityscapes,
    )

    from .logs import plot_training_curve
    from .overlays import save_overlays

    data_cfg = dict(DEMO_DATA, **(data or {}))
    summary = dict(data=generate_cityscapes(data_root, **data_cfg), runs={})
    configs = {'mrevnet34': DEMO_CONFIG}
    if compare:
        configs['resnetv1c34'] = BASELINE_CONFIG
    for name, config in configs.items():
        summary['runs'][name] = _train_and_test(
            config, osp.join(work_dir, name), data_root, max_iters
        )
    run = summary['runs']['mrevnet34']
    val_images = sorted(
        glob.glob(
            osp.join(data_root, 'leftImg8bit', 'val', '*', '*_leftImg8bit.png')
        )
    )[:num_overlays]
    cfg: Config = run['cfg']
    summary['overlays'] = save_overlays(
        cfg, run['checkpoint'], val_images, osp.join(work_dir, 'overlays')
    )
    summary['curve'] = plot_training_curve(
        {name: r['work_dir'] for name, r in summary['runs'].items()},
        osp.join(work_dir, 'training_curve.png'),
    )
    return summary
