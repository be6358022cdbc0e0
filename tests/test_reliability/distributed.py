"""Two CPU processes (gloo) train like one process with the doubled batch.

Shared by ``test_distributed.py`` and ``test_distributed_launch.py``, which
split the cases so that the two pytest-xdist workers (``--dist loadfile``)
run them side by side.

``tools/dist_train.sh CONFIG 2`` runs the demo config under torchrun;
``mmrevnet.engine`` creates the gloo group and wraps the model in
``MRevNetCPUDistributedDataParallel`` when CUDA is absent. One case starts
it as mmseg's and mmpretrain's own ``tools/train.py`` are started
(``python -m torch.distributed.run ... train.py CONFIG --launcher
pytorch``, ``openmmlab_train.py`` making their calls) with
``runner_type='MRevNetRunner'`` and a SyncBN backbone: there
``MRevNetRunner`` does the same on its own. Two processes with
batch ``b`` must give the weights of one process with batch ``2b`` after
each step. That holds exactly (up to float summation order) only when
nothing depends on how the batch is split:

* BatchNorm normalises with per-process batch statistics, so the backbone
  BN runs in eval mode (``norm_eval=True``) and the heads use GroupNorm;
* SGD without momentum (Adam's first step divides by the gradient's own
  magnitude, which hides gradient errors);
* no random augmentation (RandomFlip with ``prob=0``), no dropout;
* ``DefaultSampler(shuffle=False)``: rank 0 reads images [0, 2], rank 1
  [1, 3], the single process [0, 1, 2, 3]; the loss is a mean over equally
  sized images, and DDP averages the gradients of the ranks.

Two iterations are run: DDP without ``find_unused_parameters`` reports a
parameter that got no gradient only when the next iteration starts.
"""

import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS

from mmrevnet.engine import load_runner_checkpoint
from mmrevnet.reversible.function import MomentumStageFunction
from tools.cli.config import build_train_config

from .helpers import (
    DEMO_CONFIG,
    REPO,
    RESNET_CONFIG,
    cli_options,
    free_port,
    tiny_options,
)

MAX_ITERS = 2
#: Batch per process in the 2-process run; the single process gets twice.
BATCH = 2
WORLD_SIZE = 2
#: Measured (torch 2.14.1, CPU): max |w_2proc - w_1proc| is 7.5e-9 after
#: one step and 1.5e-8 after two, where the largest weight update is 1.9e-3
#: and 4.8e-3 (float summation order only; a wrong gradient scale or a
#: missing rank would differ by ~1e-3).
RTOL, ATOL = 1e-5, 1e-7
#: The reference's largest weight update must exceed this (non-trivial).
MIN_UPDATE = 1e-4
BACKBONES = dict(mrevnet='MRevNetV1c', resnet='ResNetV1c')
BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')
#: The control runs mmseg's ResNetV1c-34 in the same model and recipe.
#: The shipped baseline config passes ``{{_base_.norm_cfg}}``, which carries
#: the ``_scope_`` key mmengine adds to the base's dicts, to the backbone,
#: and BatchNorm rejects it; this derived config replaces that norm_cfg.
RESNET_FIXED = """_base_ = {config!r}
model = dict(
    backbone=dict(norm_cfg=dict(_delete_=True, type='BN', requires_grad=True))
)
"""


@pytest.fixture(scope='module')
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp('configs')
    resnet = folder / 'pspnet_r34_reliability.py'
    resnet.write_text(RESNET_FIXED.format(config=RESNET_CONFIG))
    return dict(mrevnet=DEMO_CONFIG, resnet=str(resnet))


def exact_options(data_root: str, batch_size: int) -> dict:
    """Options under which 2 x b and 1 x 2b must agree (module docstring)."""
    options = tiny_options(data_root, MAX_ITERS, batch_size)
    options.update(
        {
            'model.backbone.norm_eval': True,
            'model.decode_head.norm_cfg.type': 'GN',
            'model.decode_head.norm_cfg.num_groups': 8,  # of 64 channels
            'model.decode_head.dropout_ratio': 0.0,
            'model.auxiliary_head.norm_cfg.type': 'GN',
            'model.auxiliary_head.norm_cfg.num_groups': 8,  # of 32
            'model.auxiliary_head.dropout_ratio': 0.0,
            'train_dataloader.sampler.type': 'DefaultSampler',
            'train_dataloader.sampler.shuffle': False,
            # Index 2 of the demo's train pipeline is RandomFlip.
            'train_dataloader.dataset.pipeline.2.prob': 0.0,
            'optim_wrapper.optimizer.type': 'SGD',
            'optim_wrapper.optimizer.lr': 0.1,
            'optim_wrapper.optimizer.momentum': 0.0,
            'default_hooks.checkpoint.interval': 1,
        }
    )
    return options


class InitialWeights(Hook):
    """Keeps a copy of the initialised weights."""

    priority = 'VERY_HIGH'

    def __init__(self):
        self.state = None

    def before_train(self, runner):
        model = getattr(runner.model, 'module', runner.model)
        self.state = {
            k: v.detach().clone() for k, v in model.state_dict().items()
        }


def losses(log: str, total: int = MAX_ITERS) -> list:
    """Total loss of each logged iteration of a log file."""
    with open(log) as f:
        text = f.read()
    found = re.findall(
        rf'Iter\(train\) \[\s*(\d+)/{total}\].*?  loss: ([0-9.]+)', text
    )
    return [float(loss) for _, loss in sorted(found, key=lambda x: int(x[0]))]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, reliability_data, configs):
    """Factory: one process, batch 2b, in this process (cached)."""
    cache = {}

    def train(backbone: str) -> dict:
        if backbone in cache:
            return cache[backbone]
        work_dir = str(tmp_path_factory.mktemp(f'ref_{backbone}'))
        options = exact_options(reliability_data, WORLD_SIZE * BATCH)
        options['visualizer.name'] = f'reliability_ref_{backbone}'
        options['experiment_name'] = f'reliability_ref_{backbone}'
        cfg = build_train_config(
            configs[backbone], work_dir=work_dir, cfg_options=options
        )
        assert cfg.train_dataloader.dataset.pipeline[2].type == 'RandomFlip'
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        # Count the calls of the memory-saving autograd Function.
        apply = MomentumStageFunction.apply
        calls = []

        def counted(*args):
            calls.append(1)
            return apply(*args)

        MomentumStageFunction.apply = counted
        try:
            runner = RUNNERS.build(cfg)
            initial = InitialWeights()
            runner.register_hook(initial)
            runner.train()
        finally:
            MomentumStageFunction.apply = apply
            torch.set_num_threads(threads)
        # One call per stage and iteration for m-RevNet, none for ResNet.
        expected = 4 * MAX_ITERS if backbone == 'mrevnet' else 0
        assert len(calls) == expected
        log = glob.glob(osp.join(work_dir, '*', '*.log'))
        assert len(log) == 1, log
        cache[backbone] = dict(
            work_dir=work_dir, initial=initial.state, losses=losses(log[0])
        )
        return cache[backbone]

    return train


#: mmseg's / mmpretrain's launch path: their train.py's calls, under
#: torchrun (see openmmlab_train.py).
OPENMMLAB_TRAIN = osp.join(osp.dirname(__file__), 'openmmlab_train.py')


def dist_train(config: str, work_dir: str, options: dict, launch='project'):
    """Two processes: ``bash tools/dist_train.sh config 2 ...`` (project)
    or ``python -m torch.distributed.run --nproc_per_node=2
    openmmlab_train.py config --launcher pytorch ...`` (openmmlab);
    returns the output."""
    port = str(free_port())
    env = dict(
        os.environ, PYTHON=sys.executable, PORT=port, CUDA_VISIBLE_DEVICES=''
    )
    if launch == 'project':
        start = [
            'bash',
            osp.join(REPO, 'tools', 'dist_train.sh'),
            config,
            str(WORLD_SIZE),
        ]
    else:
        start = [
            sys.executable,
            '-m',
            'torch.distributed.run',
            f'--nproc_per_node={WORLD_SIZE}',
            f'--master_port={port}',
            OPENMMLAB_TRAIN,
            config,
            '--launcher',
            'pytorch',
        ]
    command = [
        *start,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *cli_options(options),
        # DEBUG makes every rank write its own log file.
        'log_level=DEBUG',
    ]
    result = subprocess.run(
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def load_state(path: str) -> dict:
    return load_runner_checkpoint(path)['state_dict']


def compare(reference: dict, other: dict) -> float:
    """Assert the agreement of two state dicts; returns max |difference|."""
    assert reference.keys() == other.keys()
    worst = 0.0
    for key, expected in reference.items():
        actual = other[key]
        if key.rsplit('.', 1)[-1] in BUFFERS or not (
            expected.is_floating_point()
        ):
            assert torch.equal(actual, expected), key
            continue
        assert torch.allclose(actual, expected, rtol=RTOL, atol=ATOL), (
            key,
            (actual - expected).abs().max().item(),
        )
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


#: Cases: backbone, DDP options and launch. ``find_unused_parameters``
#: (mmengine's default False, and True) is a config key; ``static_graph``
#: goes through ``model_wrapper_cfg``. The openmmlab launch leaves
#: everything to the runner the config names; its backbone SyncBN becomes
#: BN there (in eval mode here, so it matches the BN reference exactly).
CASES = {
    'mrevnet': ('mrevnet', {}, 'project'),
    'mrevnet-find_unused': (
        'mrevnet',
        {'find_unused_parameters': True},
        'project',
    ),
    'mrevnet-static_graph': (
        'mrevnet',
        {'model_wrapper_cfg.static_graph': True},
        'project',
    ),
    'mrevnet-openmmlab_launch': (
        'mrevnet',
        {
            'runner_type': 'MRevNetRunner',
            'model.backbone.norm_cfg.type': 'SyncBN',
        },
        'openmmlab',
    ),
    'resnet': ('resnet', {}, 'project'),
}


def check_case(tmp_path, reliability_data, configs, reference, case):
    """Run ``case`` of :data:`CASES` on two processes and check it against
    the one-process reference."""
    backbone, ddp_options, launch = CASES[case]
    ref = reference(backbone)
    work_dir = str(tmp_path / 'dist')
    options = exact_options(reliability_data, BATCH)
    options.update(ddp_options)
    config = configs[backbone]
    output = dist_train(config, work_dir, options, launch)

    dumped = Config.fromfile(osp.join(work_dir, osp.basename(config)))
    assert dumped.model.backbone.type == BACKBONES[backbone]
    find_unused = ddp_options.get('find_unused_parameters', False)
    if launch == 'project':
        # The options reached the CPU DDP wrapper.
        wrapper = dumped.model_wrapper_cfg
        static_graph = ddp_options.get('model_wrapper_cfg.static_graph', False)
        assert wrapper.type == 'MRevNetCPUDistributedDataParallel'
        assert wrapper.get('find_unused_parameters', False) is find_unused
        assert wrapper.get('static_graph', False) is static_graph
        assert dumped.env_cfg.dist_cfg.backend == 'gloo'
    else:
        # The config is the user's (nccl, SyncBN, no wrapper): the runner
        # chose gloo, BN and the CPU wrapper itself.
        assert 'model_wrapper_cfg' not in dumped
        assert dumped.model.backbone.norm_cfg.type == 'SyncBN'
        started = (
            'runner: MRevNetRunner, model: MRevNetCPUDistributedDataParallel'
        )
        assert output.count(started) == WORLD_SIZE, output[-6000:]
        assert 'SyncBN is unavailable without CUDA' in output
    # With find_unused_parameters DDP found no unused parameter: the
    # parameters of the custom autograd Function are explicit inputs of its
    # graph node.
    unused_warning = 'did not find any unused parameters'
    assert (unused_warning in output) is find_unused, output[-6000:]

    # Both ranks trained every iteration; rank 0 reports world size 2.
    rank_logs = {}
    for rank in range(WORLD_SIZE):
        found = glob.glob(osp.join(work_dir, '*', f'*_rank{rank}.log'))
        assert len(found) == 1, (rank, found)
        rank_logs[rank] = found[0]
    with open(rank_logs[0]) as f:
        text = f.read()
    assert 'Distributed training: True' in text
    assert f'GPU number: {WORLD_SIZE}' in text
    rank_losses = [losses(rank_logs[rank]) for rank in range(WORLD_SIZE)]
    for rank_loss in rank_losses:
        assert len(rank_loss) == MAX_ITERS
    # The ranks saw different images, and the single process the union.
    assert rank_losses[0][0] != rank_losses[1][0]
    for step in range(MAX_ITERS):
        mean = sum(loss[step] for loss in rank_losses) / WORLD_SIZE
        assert abs(mean - ref['losses'][step]) < 2e-4, (rank_losses, ref)

    # The weights agree after every step, BN buffers exactly.
    for step in range(1, MAX_ITERS + 1):
        expected = load_state(osp.join(ref['work_dir'], f'iter_{step}.pth'))
        actual = load_state(osp.join(work_dir, f'iter_{step}.pth'))
        diff = compare(expected, actual)
        update = max(
            (expected[k] - v).abs().max().item()
            for k, v in ref['initial'].items()
            if v.is_floating_point()
        )
        print(
            f'{case} step {step}: '
            f'max |w_2proc - w_1proc| = {diff:.3g}, '
            f'max |update| = {update:.3g}'
        )
        assert update > MIN_UPDATE
