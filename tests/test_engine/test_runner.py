"""MRevNetRunner's launch without CUDA: the errors before anything starts,
and the wrapper config (training itself: tests/test_reliability)."""

import pytest
import torch
from torch import nn

from mmrevnet.engine import MRevNetRunner
from mmrevnet.engine.distributed import (
    CPU_WRAPPER,
    TORCHRUN_VARIABLES,
    cpu_model_wrapper_cfg,
    init_cpu_launcher_env,
)

needs_cpu_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason='the CPU launch path'
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.layer(inputs)


def _build(tmp_path, launcher):
    return MRevNetRunner(
        model=Toy(), work_dir=str(tmp_path), launcher=launcher
    )


@needs_cpu_only
@pytest.mark.parametrize('launcher', ['slurm', 'mpi'])
def test_launcher_that_needs_cuda_fails_in_one_line(tmp_path, launcher):
    with pytest.raises(RuntimeError) as error:
        _build(tmp_path, launcher)
    message = str(error.value)
    assert '\n' not in message
    assert f'launcher={launcher!r} needs CUDA' in message
    assert 'python -m torch.distributed.run --nproc_per_node=2' in message
    assert message.endswith('CONFIG --launcher pytorch')
    assert not torch.distributed.is_initialized()


@needs_cpu_only
def test_pytorch_launcher_outside_torchrun_fails_in_one_line(
    tmp_path, monkeypatch
):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr('sys.argv', ['/somewhere/tools/train.py'])
    with pytest.raises(RuntimeError) as error:
        _build(tmp_path, 'pytorch')
    message = str(error.value)
    assert '\n' not in message
    assert 'needs the environment torchrun sets' in message
    assert ', '.join(TORCHRUN_VARIABLES) in message
    # The script that was started is the one to start under torchrun.
    assert message.endswith(
        'python -m torch.distributed.run --nproc_per_node=2 '
        '/somewhere/tools/train.py CONFIG --launcher pytorch'
    )
    assert not torch.distributed.is_initialized()


def test_no_launcher_and_existing_group_do_nothing(monkeypatch):
    assert init_cpu_launcher_env('none') is False
    monkeypatch.setattr(torch.distributed, 'is_initialized', lambda: True)
    assert init_cpu_launcher_env('slurm') is False


def test_single_process_runner_is_mmengines(tmp_path):
    runner = _build(tmp_path, 'none')
    assert not runner.distributed
    assert type(runner.model) is Toy


@pytest.mark.parametrize(
    'given, expected',
    [
        (
            None,
            dict(
                type=CPU_WRAPPER,
                broadcast_buffers=False,
                find_unused_parameters=True,
            ),
        ),
        (dict(static_graph=True), dict(type=CPU_WRAPPER, static_graph=True)),
        (
            dict(type='MMDistributedDataParallel', broadcast_buffers=True),
            dict(type=CPU_WRAPPER, broadcast_buffers=True),
        ),
        (dict(type='MMFullyShardedDataParallel'), None),
    ],
)
def test_cpu_model_wrapper_cfg(given, expected):
    unchanged = dict(given) if given is not None else None
    result = cpu_model_wrapper_cfg(given, find_unused_parameters=True)
    assert result == (unchanged if expected is None else expected)
