"""Run mmseg's and mmpretrain's own tools on swapped configs and checkpoints.

Trains a tiny PSPNet (shipped config, m-RevNet-V1c-18 with 16 channels) on
generated Cityscapes-layout data and a tiny m-RevNet classifier on a
generated image folder with this project's ``tools/train.py``, then runs
the tools of mmsegmentation's and mmpretrain's source distributions
(``<sdist>/mmseg/.mim/tools``, ``<sdist>/mmpretrain/.mim/tools``) and
mmseg's ``demo/image_demo.py`` on the derived configs and the checkpoints,
each in a fresh process, and writes a table of command, exit code and
first output line (``docs/tools.md``).

Example:
    python tools/analysis_tools/upstream_tools.py \\
        --mmseg /tmp/sdist/mmsegmentation-1.2.2 \\
        --mmpretrain /tmp/sdist/mmpretrain-1.2.0 \\
        --image-demo /tmp/mmseg_demo/demo/image_demo.py \\
        --work-dir /tmp/upstream_tools --out docs/tools.json
"""

import argparse
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Dict, List

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SEG_CONFIG = (
    'configs/pspnet/pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'
)
CLS_CONFIG = 'configs/mrevnet/mrevnetv1c18_8xb32_in1k.py'
#: Output lines that are third-party noise, not a tool's first word.
_NOISE = ('warnings.warn', 'UserWarning', 'Warning:', 'FutureWarning')


def _seg_options(data_root: str) -> Dict:
    width = [16, 32, 64, 128]
    options = {
        'model.pretrained': None,
        'model.data_preprocessor.size': (64, 64),
        'model.backbone.norm_cfg.type': 'BN',
        'model.backbone.depth': 18,
        'model.backbone.stem_channels': 16,
        'model.backbone.base_channels': 16,
        'model.decode_head.in_channels': width[3],
        'model.decode_head.channels': 16,
        'model.decode_head.norm_cfg.type': 'BN',
        'model.auxiliary_head.in_channels': width[2],
        'model.auxiliary_head.channels': 8,
        'model.auxiliary_head.norm_cfg.type': 'BN',
        'train_dataloader.batch_size': 2,
        'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_dataloader.dataset.data_root': data_root,
        'train_dataloader.dataset.pipeline.2.scale': (128, 64),
        'train_dataloader.dataset.pipeline.3.crop_size': (64, 64),
        'train_cfg.max_iters': 2,
        'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2,
        'default_hooks.logger.interval': 1,
    }
    for split in ('val', 'test'):
        options.update(
            {
                f'{split}_dataloader.num_workers': 0,
                f'{split}_dataloader.persistent_workers': False,
                f'{split}_dataloader.dataset.data_root': data_root,
                f'{split}_dataloader.dataset.pipeline.1.scale': (128, 64),
            }
        )
    return options


def _cls_config(cfg, root: str):
    from mmengine.config import ConfigDict

    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]

    def loader(split, shuffle):
        return ConfigDict(
            batch_size=4,
            num_workers=0,
            persistent_workers=False,
            dataset=dict(
                type='CustomDataset',
                data_root=root,
                data_prefix=split,
                pipeline=pipeline,
            ),
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
        )

    cfg.train_dataloader = loader('train', True)
    cfg.val_dataloader = loader('val', False)
    cfg.test_dataloader = loader('val', False)
    cfg.val_evaluator = cfg.test_evaluator = ConfigDict(
        type='Accuracy', topk=(1,)
    )
    cfg.model.head.num_classes = 4
    cfg.model.head.topk = (1,)
    cfg.data_preprocessor.num_classes = 4
    cfg.train_cfg = ConfigDict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = ConfigDict(seed=0)
    return cfg


def derived_configs(work_dir: str) -> Dict[str, str]:
    """Generated data and the shipped configs made tiny, as files."""
    from mmengine.config import Config

    import mmrevnet  # noqa: F401
    from tools.dataset_converters.generators.synthetic import (
        generate_cityscapes,
        generate_imagefolder,
    )

    seg_root = osp.join(work_dir, 'cityscapes')
    cls_root = osp.join(work_dir, 'imagefolder')
    if not osp.isdir(seg_root):
        generate_cityscapes(
            seg_root, num_train=4, num_val=2, size=(64, 128), seed=0
        )
    if not osp.isdir(cls_root):
        generate_imagefolder(
            cls_root,
            num_classes=4,
            per_class_train=2,
            per_class_val=1,
            size=(32, 32),
        )
    seg = Config.fromfile(osp.join(REPO, SEG_CONFIG))
    seg.merge_from_dict(_seg_options(seg_root))
    cls = _cls_config(Config.fromfile(osp.join(REPO, CLS_CONFIG)), cls_root)
    paths = dict(
        seg=osp.join(work_dir, 'pspnet_mrevnet18-tiny_cityscapes.py'),
        cls=osp.join(work_dir, 'mrevnetv1c18-tiny_imagefolder.py'),
        seg_root=seg_root,
        cls_root=cls_root,
    )
    seg.dump(paths['seg'])
    cls.dump(paths['cls'])
    return paths


def _first_line(output: str) -> str:
    for line in output.splitlines():
        text = line.strip()
        if text and not any(noise in text for noise in _NOISE):
            return text[:200]
    return ''


def _last_error(output: str) -> str:
    for line in reversed(output.splitlines()):
        text = line.strip()
        if 'Error' in text or 'error' in text:
            return text[:200]
    return ''


def run(args: List[str], cwd: str, env: Dict) -> Dict:
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    shown = list(args)
    if shown[0] == '-c':
        shown[:2] = [_SNIPPETS[shown[1]]]
    return dict(
        command='python ' + ' '.join(shown),
        exit_code=result.returncode,
        first_line=_first_line(output),
        last_line=_first_line('\n'.join(reversed(output.splitlines()))),
        error=_last_error(output) if result.returncode else '',
    )


_API_SEG = """
import sys, torch
import mmrevnet
from mmseg.apis import MMSegInferencer, inference_model, init_model
config, checkpoint, image = sys.argv[1:4]
model = init_model(config, checkpoint, device='cpu')
result = inference_model(model, image)
inferencer = MMSegInferencer(config, checkpoint, device='cpu')
out = inferencer(image, return_datasamples=True)
allowed = [str(g) for g in torch.serialization.get_safe_globals()]
# torch allows its own DTensor classes itself; nothing else was added.
assert not [g for g in allowed if any(name in g for name in (
    'mmengine', 'numpy', 'getattr', 'mmseg', 'mmpretrain', 'mmrevnet'))]
print('segmented', tuple(result.pred_sem_seg.data.shape),
      tuple(out.pred_sem_seg.data.shape), 'no mmengine/numpy/getattr allowed')
"""

_API_CLS = """
import sys, torch
import mmrevnet
from mmpretrain import ImageClassificationInferencer
config, checkpoint, image = sys.argv[1:4]
inferencer = ImageClassificationInferencer(config, checkpoint, device='cpu')
result = inferencer(image)[0]
allowed = [str(g) for g in torch.serialization.get_safe_globals()]
# torch allows its own DTensor classes itself; nothing else was added.
assert not [g for g in allowed if any(name in g for name in (
    'mmengine', 'numpy', 'getattr', 'mmseg', 'mmpretrain', 'mmrevnet'))]
print('classified', result['pred_label'], 'no mmengine/numpy/getattr allowed')
"""

_UNSAFE = """
import sys, torch
names = torch.serialization.get_unsafe_globals_in_checkpoint(sys.argv[1])
torch.load(sys.argv[1])
print('weights_only load ok, unsafe globals:', names)
"""


_SNIPPETS = {
    _API_SEG: '-c <init_model + inference_model + MMSegInferencer>',
    _API_CLS: '-c <ImageClassificationInferencer>',
    _UNSAFE: '-c <get_unsafe_globals_in_checkpoint + torch.load>',
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--mmseg', required=True, help='unpacked sdist')
    parser.add_argument('--mmpretrain', required=True, help='unpacked sdist')
    parser.add_argument('--image-demo', required=True)
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--out', required=True, help='json file')
    args = parser.parse_args(argv)
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    paths = derived_configs(work)
    env = dict(os.environ)
    seg_tools = osp.join(args.mmseg, 'mmseg', '.mim', 'tools')
    cls_tools = osp.join(args.mmpretrain, 'mmpretrain', '.mim', 'tools')
    seg_dir, cls_dir = osp.join(work, 'seg_run'), osp.join(work, 'cls_run')
    seg_ckpt = osp.join(seg_dir, 'iter_2.pth')
    cls_ckpt = osp.join(cls_dir, 'epoch_1.pth')
    image = sorted(
        osp.join(dp, f)
        for dp, _, files in os.walk(
            osp.join(paths['seg_root'], 'leftImg8bit', 'val')
        )
        for f in files
    )[0]
    cls_image = sorted(
        osp.join(dp, f)
        for dp, _, files in os.walk(osp.join(paths['cls_root'], 'val'))
        for f in files
    )[0]
    seg, cls = paths['seg'], paths['cls']
    rows = []
    steps = [
        ('train (project)', ['tools/train.py', seg, '--work-dir', seg_dir]),
        (
            'train cls (project)',
            ['tools/train.py', cls, '--work-dir', cls_dir],
        ),
        ('weights_only torch.load, seg', ['-c', _UNSAFE, seg_ckpt]),
        ('weights_only torch.load, cls', ['-c', _UNSAFE, cls_ckpt]),
        (
            'mmseg tools/test.py',
            [
                osp.join(seg_tools, 'test.py'),
                seg,
                seg_ckpt,
                '--work-dir',
                osp.join(work, 'seg_test'),
            ],
        ),
        (
            'mmseg tools/test.py --show-dir',
            [
                osp.join(seg_tools, 'test.py'),
                seg,
                seg_ckpt,
                '--work-dir',
                osp.join(work, 'seg_test_show'),
                '--show-dir',
                osp.join(work, 'seg_show'),
            ],
        ),
        (
            'mmseg demo/image_demo.py',
            [
                args.image_demo,
                image,
                seg,
                seg_ckpt,
                '--device',
                'cpu',
                '--out-file',
                osp.join(work, 'demo.png'),
            ],
        ),
        (
            'mmseg init_model/inference_model/MMSegInferencer',
            ['-c', _API_SEG, seg, seg_ckpt, image],
        ),
        (
            'mmseg get_flops.py',
            [
                osp.join(seg_tools, 'analysis_tools', 'get_flops.py'),
                seg,
                '--shape',
                '64',
                '64',
            ],
        ),
        (
            'project get_flops.py (seg)',
            ['tools/analysis_tools/get_flops.py', seg, '--shape', '64', '64'],
        ),
        (
            'mmseg browse_dataset.py',
            [
                osp.join(seg_tools, 'misc', 'browse_dataset.py'),
                seg,
                '--not-show',
                '--output-dir',
                osp.join(work, 'seg_browse'),
            ],
        ),
        (
            'mmseg print_config.py',
            [osp.join(seg_tools, 'misc', 'print_config.py'), seg],
        ),
        (
            'mmpretrain tools/test.py',
            [
                osp.join(cls_tools, 'test.py'),
                cls,
                cls_ckpt,
                '--work-dir',
                osp.join(work, 'cls_test'),
            ],
        ),
        (
            'mmpretrain ImageClassificationInferencer',
            ['-c', _API_CLS, cls, cls_ckpt, cls_image],
        ),
        (
            'mmpretrain get_flops.py',
            [
                osp.join(cls_tools, 'analysis_tools', 'get_flops.py'),
                cls,
                '--shape',
                '32',
                '32',
            ],
        ),
        (
            'project get_flops.py (cls)',
            ['tools/analysis_tools/get_flops.py', cls, '--shape', '32', '32'],
        ),
        (
            'mmpretrain browse_dataset.py',
            [
                osp.join(cls_tools, 'visualization', 'browse_dataset.py'),
                cls,
                '--not-show',
                '--output-dir',
                osp.join(work, 'cls_browse'),
                '--phase',
                'val',
            ],
        ),
    ]
    for name, command in steps:
        row = dict(tool=name, **run(command, REPO, env))
        print(json.dumps(row), flush=True)
        rows.append(row)
    with open(args.out, 'w') as f:
        json.dump(rows, f, indent=1)


if __name__ == '__main__':
    main()


def render(before: List[Dict], after: List[Dict], header: str) -> str:
    """docs/tools.md: per tool, the command and both runs' results."""
    old = {row['tool']: row for row in before}
    lines = [
        header,
        '',
        '| tool | before: exit code | before: first output line (error) '
        '| after: exit code | after: first output line |',
        '|---|---|---|---|---|',
    ]

    def cell(text):
        return text.replace('|', '\\|') if text else ''

    for row in after:
        prev = old.get(row['tool'])
        if prev is None:
            before_cells = '(not run) | '
        else:
            message = prev['first_line']
            if prev['exit_code']:
                message = f'{message} ({prev["error"]})'
            before_cells = f'{prev["exit_code"]} | {cell(message)}'
        message = row['first_line']
        if row['exit_code']:
            message = f'{message} ({row["error"]})'
        lines.append(
            f'| {row["tool"]} | {before_cells} | {row["exit_code"]} | '
            f'{cell(message)} |'
        )
    lines += ['', '## Commands (after)', '']
    for row in after:
        lines += [f'- {row["tool"]}:', '', f'      {row["command"]}', '']
    return '\n'.join(lines)
