"""mmseg's and mmpretrain's tools, through the APIs they call, on our files.

Each test does what one upstream tool does (``tools/test.py`` with and
without ``--show-dir``, ``demo/image_demo.py``, ``init_model`` +
``inference_model``, ``MMSegInferencer``, ``get_flops.py``,
``browse_dataset.py``, ``print_config.py``; mmpretrain's ``tools/test.py``
and ``ImageClassificationInferencer``) with mmengine's plain ``Runner`` and
torch's default ``weights_only=True``, on a checkpoint that this project's
``MRevNetRunner`` wrote. ``docs/tools.md`` runs the tools themselves.
"""

import copy
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import RUNNERS, DefaultScope

import mmrevnet  # noqa: F401  (compat shims before mmseg)
from tools.cli.config import build_train_config
from tools.dataset_converters.generators.synthetic import generate_imagefolder

from .helpers import REPO

pytestmark = pytest.mark.slow

_FOREIGN = ('mmengine', 'numpy', 'getattr', 'mmseg', 'mmpretrain', 'mmrevnet')


def _foreign_allowed():
    """Allowlist entries that are not torch's own."""
    return [
        str(g)
        for g in torch.serialization.get_safe_globals()
        if any(name in str(g) for name in _FOREIGN)
    ]


def _val_image(data_root):
    folder = osp.join(data_root, 'leftImg8bit', 'val')
    return sorted(
        osp.join(dp, f) for dp, _, files in os.walk(folder) for f in files
    )[0]


def _plain_runner_cfg(run, work_dir):
    """The dumped config as mmseg's tools/test.py makes it, mmengine Runner."""
    cfg = Config.fromfile(run['dumped_config'])
    cfg.runner_type = 'Runner'
    cfg.load_from = run['checkpoint']
    cfg.work_dir = str(work_dir)
    cfg.visualizer.name = f'vis_{osp.basename(str(work_dir))}'
    return cfg


def test_checkpoint_opens_with_weights_only(trained_run):
    run = trained_run('pspnet', 'cityscapes')
    names = torch.serialization.get_unsafe_globals_in_checkpoint(
        run['checkpoint']
    )
    assert names == []
    checkpoint = torch.load(run['checkpoint'])
    assert set(checkpoint) >= {'meta', 'state_dict', 'message_hub'}
    assert _foreign_allowed() == []


def test_mmseg_test_tool_with_show_dir(trained_run, tmp_path):
    """tools/test.py [--show-dir]: mmengine Runner, load_from, test()."""
    from mmengine.runner import Runner

    run = trained_run('pspnet', 'cityscapes')
    cfg = _plain_runner_cfg(run, tmp_path / 'test')
    # What --show-dir sets (mmseg's trigger_visualization_hook).
    cfg.default_hooks.visualization.draw = True
    cfg.default_hooks.visualization.interval = 1
    cfg.visualizer.save_dir = str(tmp_path / 'show')
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    with DefaultScope.overwrite_default_scope('mmseg'):
        runner = Runner.from_cfg(cfg)
        metrics = runner.test()
    assert 'mIoU' in metrics
    painted = [f for _, _, files in os.walk(tmp_path / 'show') for f in files]
    assert [f for f in painted if f.endswith('.png')], painted
    assert _foreign_allowed() == []


def test_mmseg_inference_apis_in_fresh_process(trained_run, data_roots):
    """init_model + inference_model (image_demo.py) and MMSegInferencer."""
    run = trained_run('pspnet', 'cityscapes')
    script = (
        'import sys, torch, mmrevnet\n'
        'from mmseg.apis import MMSegInferencer, inference_model, '
        'init_model, show_result_pyplot\n'
        'config, ckpt, image, out = sys.argv[1:5]\n'
        "model = init_model(config, ckpt, device='cpu')\n"
        'result = inference_model(model, image)\n'
        'show_result_pyplot(model, image, result, show=False, '
        'out_file=out, with_labels=True)\n'
        "inferencer = MMSegInferencer(config, ckpt, device='cpu')\n"
        'pred = inferencer(image, return_datasamples=True)\n'
        'assert pred.pred_sem_seg.data.shape == '
        'result.pred_sem_seg.data.shape\n'
        f'bad = [g for g in map(str, torch.serialization.get_safe_globals())'
        f' if any(n in g for n in {_FOREIGN!r})]\n'
        'assert not bad, bad\n'
        "print('ok')\n"
    )
    out = osp.join(osp.dirname(run['checkpoint']), 'painted.png')
    result = subprocess.run(
        [
            sys.executable,
            '-c',
            script,
            run['dumped_config'],
            run['checkpoint'],
            _val_image(data_roots['cityscapes']),
            out,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert osp.isfile(out)


def test_get_flops_counts_the_eval_path(trained_run):
    from tools.analysis_tools.get_flops import build_model, complexity

    run = trained_run('pspnet', 'cityscapes')
    model = build_model(run['dumped_config'])
    result = complexity(model, (64, 64))
    assert result['params'] == sum(p.numel() for p in model.parameters())
    assert result['flops'] > 0
    # Eval path: the same count as the model's plain modules (a second call
    # counts the same).
    assert complexity(model, (64, 64))['flops'] == result['flops']


def test_browse_dataset_and_print_config(trained_run, tmp_path):
    """Our browse_dataset.py (mmseg's draws into a non-contiguous array)."""
    from tools.analysis_tools.browse_dataset import browse

    run = trained_run('pspnet', 'cityscapes')
    cfg = Config.fromfile(run['dumped_config'])
    assert 'MRevNetV1c' in cfg.pretty_text  # print_config.py
    count = browse(
        run['dumped_config'],
        str(tmp_path),
        cfg_options={'visualizer.name': 'browse_dataset_test'},
    )
    drawn = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert count > 0 and len(drawn) == count


# -- mmpretrain ------------------------------------------------------------


@pytest.fixture(scope='module')
def classifier_run(tmp_path_factory):
    """A 2-iteration classifier trained by this project's runner."""
    root = str(tmp_path_factory.mktemp('imagefolder'))
    generate_imagefolder(
        root, num_classes=4, per_class_train=2, per_class_val=1, size=(32, 32)
    )
    work_dir = str(tmp_path_factory.mktemp('cls_run'))
    cfg = build_train_config(
        osp.join(REPO, 'configs', 'mrevnet', 'mrevnetv1c18_8xb32_in1k.py'),
        work_dir=work_dir,
    )
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    loader = ConfigDict(
        batch_size=4,
        num_workers=0,
        persistent_workers=False,
        dataset=dict(
            type='CustomDataset',
            data_root=root,
            data_prefix='train',
            pipeline=pipeline,
        ),
        sampler=dict(type='DefaultSampler', shuffle=False),
    )
    cfg.train_dataloader = loader
    cfg.test_dataloader = copy.deepcopy(loader)
    cfg.test_dataloader.dataset.data_prefix = 'val'
    cfg.test_evaluator = ConfigDict(type='Accuracy', topk=(1,))
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.model.head.num_classes = 4
    cfg.model.head.topk = (1,)
    cfg.data_preprocessor.num_classes = 4
    cfg.train_cfg = ConfigDict(by_epoch=True, max_epochs=1)
    cfg.randomness = ConfigDict(seed=0)
    runner = RUNNERS.build(cfg)
    runner.train()
    config = osp.join(work_dir, 'tiny_cls.py')
    cfg.dump(config)
    image = sorted(
        osp.join(dp, f)
        for dp, _, files in os.walk(osp.join(root, 'val'))
        for f in files
    )[0]
    return dict(
        config=config,
        checkpoint=osp.join(work_dir, 'epoch_1.pth'),
        image=image,
        work_dir=work_dir,
    )


def test_mmpretrain_test_tool_and_inferencer(classifier_run, tmp_path):
    from mmengine.runner import Runner
    from mmpretrain import ImageClassificationInferencer

    names = torch.serialization.get_unsafe_globals_in_checkpoint(
        classifier_run['checkpoint']
    )
    assert names == []
    cfg = Config.fromfile(classifier_run['config'])
    cfg.runner_type = 'Runner'
    cfg.load_from = classifier_run['checkpoint']
    cfg.work_dir = str(tmp_path)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        metrics = Runner.from_cfg(cfg).test()
    assert 'accuracy/top1' in metrics
    inferencer = ImageClassificationInferencer(
        classifier_run['config'], classifier_run['checkpoint'], device='cpu'
    )
    result = inferencer(classifier_run['image'])[0]
    assert 0 <= result['pred_label'] < 4
    assert _foreign_allowed() == []


def test_browse_classification(classifier_run, tmp_path):
    """Our browse_dataset.py on an mmpretrain config (mmpretrain's refuses
    the ``_scope_`` key that ``mmpretrain::`` inheritance adds)."""
    from tools.analysis_tools.browse_dataset import browse

    count = browse(classifier_run['config'], str(tmp_path), phase='test')
    drawn = [f for f in os.listdir(tmp_path) if f.endswith('.png')]
    assert count > 0 and len(drawn) == count


def test_mmpretrain_get_flops(classifier_run):
    """mmpretrain's get_flops.py: get_model, forward = extract_feat."""
    from mmengine.analysis import get_model_complexity_info
    from mmpretrain import get_model

    model = get_model(classifier_run['config'])
    model.eval()
    model.forward = model.extract_feat
    result = get_model_complexity_info(model, input_shape=(3, 32, 32))
    assert result['flops'] > 0
    assert result['params'] == sum(p.numel() for p in model.parameters())
