"""benchmarks.warm_start: the study's plumbing on a tiny data set.

The protocol (docs/warm_start.md) trains for minutes; these tests run it on
30 generated 32x32 digits (one iteration per epoch) and check what does
not depend on the budget: the conversion is exact at gamma 0, the runs
and files are there, the gamma warm-up follows its schedule through
``stage.configure``, and a trained source is reused.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mmrevnet  # noqa: F401  (registers the backbones)
from benchmarks import warm_start as ws
from mmrevnet.engine import momentum_stages
from mmrevnet.models import MRevNetV1c
from tools.dataset_converters.generators.digits import export_digits


@pytest.fixture(scope='module')
def tiny_digits(tmp_path_factory):
    root = tmp_path_factory.mktemp('digits')
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 3)
    images = rng.integers(0, 17, size=(30, 8, 8)).astype(np.float64)
    export_digits(str(root), images=images, labels=labels)
    return str(root)


def test_gamma_warmup_schedule():
    hook = ws.GammaWarmupHook(0.9, 4)
    assert [hook.gamma_at(i) for i in range(6)] == pytest.approx(
        [0.0, 0.225, 0.45, 0.675, 0.9, 0.9]
    )
    # Memory saving needs gamma > 0: min_gamma keeps it there, and
    # configure re-plans the stored states of the small gammas.
    backbone = MRevNetV1c(depth=18, gamma=0.9, memory_saving=True)
    hook = ws.GammaWarmupHook(0.9, 4, min_gamma=0.05)
    for iteration in range(5):
        runner = SimpleNamespace(iter=iteration, model=backbone)
        hook.before_train_iter(runner, iteration)
        for stage in momentum_stages(backbone).values():
            assert stage.gamma == hook.history[-1]
    assert hook.history == pytest.approx([0.05, 0.225, 0.45, 0.675, 0.9])
    with pytest.raises(ValueError):
        ws.GammaWarmupHook(0.9, 0)


def test_study_plumbing(tiny_digits, tmp_path):
    arms = [
        ws.Arm('ResNet (continued)', 'resnet'),
        ws.Arm('block 0', 'converted', 0.0, 'block'),
        ws.Arm('branch 0.9', 'converted', 0.9, 'branch'),
        ws.Arm('block 0.9 + warm-up', 'converted', 0.9, 'block', 2),
        ws.Arm('scratch', 'scratch', 0.9, 'branch'),
    ]
    out = tmp_path / 'out'
    results = ws.run_study(
        tiny_digits,
        str(tmp_path / 'work'),
        out_dir=str(out),
        depth=18,
        pretrain_epochs=1,
        finetune_epochs=2,
        seeds=[0],
        arms=arms,
        log=lambda message: None,
    )
    assert results['conversion'] == dict(
        dropped=2, renamed=18, missing=0, unexpected=0
    )
    runs = {run['arm']: run for run in results['runs']}
    assert set(runs) == {arm.name for arm in arms}
    for run in runs.values():
        assert len(run['top1']) == 3  # at conversion, after epochs 1, 2
        assert all(0.0 <= v <= 100.0 for v in run['top1'])
    # gamma 0 with 'block' is the ResNet: same predictions at conversion.
    assert runs['block 0']['top1'][0] == runs['ResNet (continued)']['top1'][0]
    # One iteration per epoch: the warm-up sets 0, then 0.45.
    assert runs['block 0.9 + warm-up']['gamma_schedule'] == pytest.approx(
        [0.0, 0.45]
    )
    rows = ws.summarize(results)
    assert [row['arm'] for row in rows] == [arm.name for arm in arms]
    with open(out / 'results.json') as f:
        assert json.load(f)['settings']['seeds'] == [0]
    table = (out / 'results.md').read_text()
    assert '| block 0.9 + warm-up |' in table
    assert (out / 'curves.png').stat().st_size > 0

    # The trained source is reused by a second study with the same settings.
    source = ws.pretrain_source(
        tiny_digits,
        str(tmp_path / 'work' / 'source_resnetv1c18'),
        depth=18,
        epochs=1,
    )
    assert source['reused']
    assert torch.load(source['checkpoint'], weights_only=False)['state_dict']
