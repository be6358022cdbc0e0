"""Fixtures of the tool tests: tiny generated data and trained runs.

Training is cached per session (:func:`trained_run`), so that the e2e,
``tools/test.py`` and image demo tests share the checkpoints.
"""

import os.path as osp
from typing import Dict

import pytest

import mmrevnet  # noqa: F401  (compat shims before mmseg)
from tools.dataset_converters.generators.synthetic import (
    generate_ade20k,
    generate_cityscapes,
)

from .helpers import (
    ADE20K_DATA,
    CITYSCAPES_DATA,
    MAX_ITERS,
    MetricsCatcher,
    check_pipelines,
    config_path,
    no_syncbn,
    tiny_options,
)


@pytest.fixture(scope='session')
def data_roots(tmp_path_factory):
    """Generated Cityscapes and ADE20K layouts (shared by the session)."""
    root = tmp_path_factory.mktemp('data')
    cityscapes = str(root / 'cityscapes')
    ade20k = str(root / 'ade20k')
    generate_cityscapes(cityscapes, **CITYSCAPES_DATA)
    generate_ade20k(ade20k, **ADE20K_DATA)
    return dict(cityscapes=cityscapes, ade20k=ade20k)


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, data_roots):
    """Factory: train ``(head, layout)`` once per session, return a record.

    The record holds ``config``, ``options``, ``work_dir``, ``checkpoint``
    (``iter_2.pth``), ``dumped_config`` (the config the Runner wrote into
    the work dir), ``val_metrics`` (one dict per validation), ``iter`` and
    the class names of the built ``backbone`` and ``decode_head``.
    """
    from mmengine.registry import RUNNERS

    from tools.cli.config import build_train_config

    cache = {}

    def train(head: str, layout: str) -> Dict:
        key = (head, layout)
        if key in cache:
            return cache[key]
        config = config_path(head, layout)
        work_dir = str(tmp_path_factory.mktemp(f'{head}_{layout}'))
        options = tiny_options(
            head, layout, data_roots[layout], name=f'vis_{head}_{layout}'
        )
        cfg = build_train_config(
            config, work_dir=work_dir, cfg_options=options
        )
        check_pipelines(cfg)
        assert no_syncbn(cfg.model), cfg.model
        runner = RUNNERS.build(cfg)
        catcher = MetricsCatcher()
        runner.register_hook(catcher)
        runner.train()
        model = runner.model
        cache[key] = dict(
            config=config,
            options=options,
            work_dir=work_dir,
            checkpoint=osp.join(work_dir, f'iter_{MAX_ITERS}.pth'),
            dumped_config=osp.join(work_dir, osp.basename(config)),
            val_metrics=catcher.val_metrics,
            iter=runner.iter,
            backbone=type(model.backbone).__name__,
            decode_head=type(model.decode_head).__name__,
        )
        return cache[key]

    return train
