"""build_train_config: the multi-process CPU launcher changes, said once."""

import os.path as osp

import mmengine.logging

from tools.cli.config import build_train_config, sync_bn_to_bn

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(
    REPO, 'configs/pspnet/pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'
)


def test_syncbn_switched_to_bn_is_logged_once(monkeypatch, tmp_path):
    messages = []
    monkeypatch.setattr(
        mmengine.logging,
        'print_log',
        lambda msg, *args, **kwargs: messages.append(msg),
    )
    cfg = build_train_config(
        CONFIG, work_dir=str(tmp_path), launcher='pytorch'
    )
    assert sync_bn_to_bn(cfg.model) == 0  # nothing left to switch
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert [m for m in messages if 'SyncBN' in m] == messages
    assert len(messages) == 1


def test_single_process_keeps_the_config(monkeypatch, tmp_path):
    messages = []
    monkeypatch.setattr(
        mmengine.logging,
        'print_log',
        lambda msg, *args, **kwargs: messages.append(msg),
    )
    cfg = build_train_config(CONFIG, work_dir=str(tmp_path))
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'
    assert messages == []
