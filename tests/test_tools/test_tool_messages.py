"""Smaller tool behaviours: --out for classifiers, --resume, --help."""

import contextlib
import io
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from tool_process import CLASSIFICATION, run_tools

from tools.dataset_converters.generators.synthetic import generate_imagefolder

from .helpers import REPO

IN1K_18 = osp.join(REPO, 'configs', 'mrevnet', 'mrevnetv1c18_8xb32_in1k.py')


def _run(*args):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _classification_config(tmp_path) -> str:
    root = tmp_path / 'images'
    generate_imagefolder(
        str(root),
        num_classes=4,
        per_class_train=1,
        per_class_val=1,
        size=(32, 32),
    )
    config = tmp_path / 'tiny_cls.py'
    config.write_text(
        f'_base_ = {IN1K_18!r}\n'
        'model = dict(head=dict(num_classes=4, topk=(1,)))\n'
        'data_preprocessor = dict(num_classes=4)\n'
        'test_dataloader = dict(\n'
        '    batch_size=2, num_workers=0, persistent_workers=False,\n'
        '    dataset=dict(\n'
        '        _delete_=True, type="CustomDataset",\n'
        f'        data_root={str(root)!r},\n'
        '        data_prefix="val", pipeline=[\n'
        '            dict(type="LoadImageFromFile"),\n'
        '            dict(type="Resize", scale=(32, 32)),\n'
        '            dict(type="PackInputs")]),\n'
        '    sampler=dict(type="DefaultSampler", shuffle=False))\n'
        'test_evaluator = dict(type="Accuracy", topk=(1,))\n'
    )
    return str(config)


def test_test_tool_out_for_a_classifier(tmp_path):
    from mmpretrain.registry import MODELS

    config = _classification_config(tmp_path)
    cfg = Config.fromfile(config)
    init_default_scope('mmpretrain')
    checkpoint = tmp_path / 'cls.pth'
    torch.save(
        {'state_dict': MODELS.build(cfg.model).state_dict()}, checkpoint
    )
    out = tmp_path / 'preds.pkl'
    # Both command lines in one process that forks a run of the tool per
    # line (tests/tool_process.py).
    result, refused = run_tools(
        [
            ['tools/test.py', config, checkpoint, '--out', out]
            + ['--work-dir', tmp_path / 'work'],
            ['tools/test.py', config, checkpoint, '--out', tmp_path / 'dir']
            + ['--work-dir', tmp_path / 'work_refused'],
        ],
        preload=CLASSIFICATION,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 4
    result = refused
    assert result.returncode != 0
    assert '--out must be a .pkl or .pickle file' in result.stderr


def test_resume_in_an_empty_work_dir_says_so(tmp_path):
    from tools.cli.config import build_train_config

    work_dir = str(tmp_path / 'empty')
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        cfg = build_train_config(IN1K_18, work_dir=work_dir, resume=True)
    assert cfg.resume is True
    assert f'no checkpoint found in {work_dir}' in buffer.getvalue()
    assert 'starts from scratch' in buffer.getvalue()


def test_dataset_generator_help_shows_defaults():
    result = _run('tools/dataset_converters/make_synthetic_dataset.py', '-h')
    assert result.returncode == 0, result.stderr
    text = ' '.join(result.stdout.split())
    assert 'default: cityscapes 16, ade20k 16, imagefolder 8' in text
    assert '(default: 0.5)' in text and '(default: None)' not in text


@pytest.mark.slow
def test_run_demo_with_fewer_iterations_than_the_log_interval(tmp_path):
    """The demo logs every 10 iterations; 3 used to leave no scalars.json.
    (A child of the tool server: its imports are already made.)"""
    (result,) = run_tools(
        [
            [
                'tools/run_demo.py',
                '--max-iters',
                3,
                '--work-dir',
                tmp_path / 'work',
                '--data-root',
                tmp_path / 'data',
            ]
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert osp.isfile(tmp_path / 'work' / 'training_curve.png')
