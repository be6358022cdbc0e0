"""Tests of mmrevnet.engine.checkpoint: safe loading of Runner checkpoints.

A catalogue of crafted files (``crafted_checkpoints.py``) goes through every
loader a user meets: ``torch.load`` as torch ships it, mmengine's loaders,
the project's scoped loader and a Runner ``resume``. Each is refused and its
payload never runs. Control tests show that the catalogue is live: with the
globals allowed as they are (the real ``getattr``, ``HistoryBuffer``), the
getattr gadget writes its marker and the hostile state replaces a
statistics method of every HistoryBuffer.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.registry import MODELS, RUNNERS
from torch.utils.data import Dataset

from mmrevnet.engine import (
    MRevNetPlainCheckpointHook,
    MRevNetRunner,
    UntrustedCheckpointError,
    check_checkpoint_objects,
    load_runner_checkpoint,
    runner_checkpoint_globals,
)
from mmrevnet.engine import checkpoint as safe_loading

from . import crafted_checkpoints as crafted

_MODEL_NAME = f'CheckpointToyModel_{uuid.uuid4().hex[:8]}'


@MODELS.register_module(name=_MODEL_NAME)
class CheckpointToyModel(BaseModel):
    """A BN and a linear layer as an mmengine model (unique name)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm = torch.nn.BatchNorm1d(2)
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(self.norm(torch.stack(inputs)))
        if mode == 'loss':
            return dict(loss=((out - torch.stack(targets)) ** 2).mean())
        return out


class ToyDataset(Dataset):
    """Eight fixed samples of a linear map, as a plain torch Dataset."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(8, 2, generator=gen)
        self.y = self.x @ torch.tensor([[1.0], [-2.0]]) + 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], targets=self.y[idx])


def _runner(work_dir, max_iters, **kwargs):
    cfg = dict(
        model=dict(type=_MODEL_NAME),
        work_dir=str(work_dir),
        experiment_name=f'test_checkpoint_{uuid.uuid4().hex[:8]}',
        default_scope=None,
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
            batch_size=4,
            num_workers=0,
        ),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
        ),
        launcher='none',
        env_cfg=dict(cudnn_benchmark=False),
        randomness=dict(seed=0),
    )
    runner_class = kwargs.pop('runner_class', MRevNetRunner)
    cfg.update(kwargs)
    return runner_class(**cfg)


@pytest.fixture(scope='module')
def trained_checkpoint(tmp_path_factory):
    """Train the toy model for 2 iterations with a real Runner."""
    work_dir = tmp_path_factory.mktemp('checkpoint_runner')
    runner = _runner(work_dir, max_iters=2)
    # The format mmengine's own Runner writes (HistoryBuffer and numpy
    # objects), which the loader must keep reading.
    runner._hooks = [
        hook
        for hook in runner._hooks
        if not isinstance(hook, MRevNetPlainCheckpointHook)
    ]
    runner.train()
    return work_dir / 'iter_2.pth'


def test_runner_is_registered():
    assert RUNNERS.get('MRevNetRunner') is MRevNetRunner


def _state_dict(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_bit_equal(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


# ---------------------------------------------------------------------------
# Genuine checkpoints still load, with weights_only=True in force.
# ---------------------------------------------------------------------------


def test_genuine_checkpoint_holds_what_needed_getattr(trained_checkpoint):
    """The objects the stand-ins exist for really are in the file."""
    names = torch.serialization.get_unsafe_globals_in_checkpoint(
        str(trained_checkpoint)
    )
    assert 'builtins.getattr' in names
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert any(name.startswith('numpy') for name in names)
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(trained_checkpoint, weights_only=True)


def test_load_runner_checkpoint_restores_message_hub(trained_checkpoint):
    checkpoint = load_runner_checkpoint(str(trained_checkpoint))
    assert checkpoint['meta']['iter'] == 2
    scalars = checkpoint['message_hub']['log_scalars']
    buffer = scalars['train/loss']
    assert type(buffer) is HistoryBuffer
    assert type(buffer._log_history) is np.ndarray
    assert buffer._log_history.dtype == np.float64
    assert len(buffer._log_history) == 2
    assert buffer.mean() == pytest.approx(buffer._log_history.mean())
    assert HistoryBuffer._statistics_methods['mean'] is HistoryBuffer.mean
    eta = checkpoint['message_hub']['runtime_info']['eta']
    assert isinstance(eta, np.floating)


def test_resume_is_bit_exact(trained_checkpoint, tmp_path):
    """2 iterations + resume + 2 equals 4 uninterrupted iterations."""
    straight = _runner(tmp_path / 'straight', max_iters=4)
    straight.train()
    resumed = _runner(
        tmp_path / 'resumed',
        max_iters=4,
        resume=True,
        load_from=str(trained_checkpoint),
    )
    resumed.train()
    assert resumed.iter == 4
    _assert_bit_equal(_state_dict(resumed.model), _state_dict(straight.model))
    hub = resumed.message_hub.log_scalars['train/loss']
    reference = straight.message_hub.log_scalars['train/loss']
    np.testing.assert_array_equal(hub._log_history, reference._log_history)


def test_load_from_and_pretrained(trained_checkpoint, tmp_path):
    saved = load_runner_checkpoint(str(trained_checkpoint))['state_dict']
    loaded = _runner(tmp_path / 'a', 2, load_from=str(trained_checkpoint))
    loaded.load_or_resume()
    assert loaded.iter == 0
    _assert_bit_equal(_state_dict(loaded.model), saved)
    # init_cfg=Pretrained with a prefix, as mmseg configs load a backbone
    # out of a whole-model checkpoint (HistoryBuffers and all).
    checkpoint = load_runner_checkpoint(str(trained_checkpoint))
    checkpoint['state_dict'] = {
        f'backbone.{k}': v for k, v in checkpoint['state_dict'].items()
    }
    prefixed = tmp_path / 'prefixed.pth'
    torch.save(checkpoint, prefixed)
    pretrained = _runner(
        tmp_path / 'b',
        2,
        model=dict(
            type=_MODEL_NAME,
            init_cfg=dict(
                type='Pretrained', checkpoint=str(prefixed), prefix='backbone.'
            ),
        ),
    )
    pretrained._init_model_weights()
    _assert_bit_equal(_state_dict(pretrained.model), saved)


# ---------------------------------------------------------------------------
# Crafted files: refused everywhere, no payload runs.
# ---------------------------------------------------------------------------


def _torch_default(path):
    return torch.load(path)


def _torch_weights_only(path):
    return torch.load(path, weights_only=True)


def _mmengine_load_checkpoint(path):
    from mmengine.runner import load_checkpoint

    return load_checkpoint(CheckpointToyModel(), path, map_location='cpu')


def _mmengine_private_loader(path):
    from mmengine.runner.checkpoint import _load_checkpoint

    return _load_checkpoint(path, map_location='cpu')


def _scoped_torch_load(path):
    with runner_checkpoint_globals(path):
        checkpoint = torch.load(path, weights_only=True)
    check_checkpoint_objects(checkpoint, path)
    return checkpoint


def _scoped_mmengine(path):
    return load_runner_checkpoint(path)


def _runner_resume(path):
    work_dir = os.path.join(os.path.dirname(path), uuid.uuid4().hex)
    runner = _runner(work_dir, 1, resume=True, load_from=path)
    runner.load_or_resume()


#: loader -> whether it is the project's (its refusal says so).
LOADERS = {
    'torch.load': (_torch_default, False),
    'torch.load(weights_only=True)': (_torch_weights_only, False),
    'mmengine.load_checkpoint': (_mmengine_load_checkpoint, False),
    'mmengine._load_checkpoint': (_mmengine_private_loader, False),
    'runner_checkpoint_globals': (_scoped_torch_load, True),
    'load_runner_checkpoint': (_scoped_mmengine, True),
    'MRevNetRunner.resume': (_runner_resume, True),
}

#: What each refusal names.
REASONS = {
    'getattr_gadget': '__globals__',
    'os_system_global': 'os.system',
    'eval_global': 'GLOBAL eval',
    'reduce_unlisted_function': 'HistoryBuffer.min',
    'history_buffer_hostile_state': 'statistics_methods',
    'numpy_object_array': "numpy.dtype('O8')",
    'zip_garbage_data_pkl': 'Unsupported operand',
    'zip_without_data_pkl': 'data.pkl',
    'zip_missing_storage': 'data/0',
    'zip_truncated_storage': 'record size',
    'history_buffer_reduce_amplified': 'HistoryBuffer(...) may not be',
    'history_buffer_reduce_object': 'HistoryBuffer(...) may not be',
    'history_buffer_reduce_junk_length': 'HistoryBuffer(...) may not be',
    'history_buffer_newobj_args': 'HistoryBuffer(...) may not be',
    'history_buffer_never_built': "checkpoint['buffer'] is a HistoryBuffer "
    'whose state was never set',
    'array_shape_2e32x2e32': 'needs 147573952589676412928 bytes, the '
    'checkpoint holds 0',
    'array_shape_2e61x8': 'needs 147573952589676412928 bytes',
    'array_shape_2e64': 'needs 147573952589676412928 bytes',
    'dtype_newobj_without_init': 'numpy.dtype takes (code, align, copy)',
    'dtype_newobj_object': "numpy.dtype('O8') has kind 'O'",
    'ndarray_reduce': 'numpy.ndarray may not be called or created',
    'ndarray_newobj': 'numpy.ndarray may not be called or created',
    'scalar_without_bytes': 'numpy float64 scalar needs 8 bytes',
    'shared_array_copies': 'more than max_elements=16777216',
    'shared_reference_amplification': "checkpoint['optimizer']['state'][0]*",
    'reference_cycle': "checkpoint['meta'][0] is a reference cycle",
    'deep_nesting': 'nests containers deeper than 100 levels',
    'meta_config_code': "checkpoint['meta']['config'] line 1 holds Call",
    'parameter_forged_class': '_rebuild_parameter_with_state raised '
    'TypeError: __class__ assignment',
}

#: In this process only what cannot take memory or time if a check broke;
#: all run in a capped child process in test_hostile_files_are_cheap.
IN_PROCESS = [name for name in crafted.ALL if name not in crafted.AMPLIFYING]


@pytest.mark.parametrize('loader', sorted(LOADERS))
@pytest.mark.parametrize('name', IN_PROCESS)
def test_crafted_checkpoint_is_refused(name, loader, tmp_path):
    path = str(tmp_path / f'{name}.pth')
    marker = tmp_path / 'payload_ran'
    crafted.craft(name, path, str(marker))
    load, ours = LOADERS[loader]
    if not ours and name in crafted.ACCEPTED_BY_TORCH:
        load(path)  # torch and mmengine's loaders accept these files
        assert not marker.exists()
        return
    mean_before = HistoryBuffer._statistics_methods.get('mean')
    rebuild_before = torch._utils._rebuild_tensor
    # torch's own loader lets the TypeError of its rebuild function out.
    errors = (pickle.UnpicklingError, RuntimeError, TypeError)
    with pytest.raises(errors) as info:
        load(path)
    assert not marker.exists()
    assert HistoryBuffer._statistics_methods.get('mean') is mean_before
    assert torch._utils._rebuild_tensor is rebuild_before
    message = str(info.value)
    if ours or name in crafted.ARCHIVES:
        assert REASONS[name] in message, message
    if ours and name not in crafted.ARCHIVES:
        assert isinstance(info.value, UntrustedCheckpointError)
        assert message.startswith('Refused to load the checkpoint')
        assert path in message or loader == 'runner_checkpoint_globals'
        assert 'weights_only=False' in message
        # The file is named once, torch's own advice is not repeated.
        assert 'Re-running' not in message


_CONTROL = """
import json, os, sys
import torch
from mmengine.logging.history_buffer import HistoryBuffer

sys.path.insert(0, {tests!r})
from test_engine import crafted_checkpoints as crafted

marker = {marker!r}
crafted.craft('getattr_gadget', {gadget!r}, marker)
crafted.craft('history_buffer_hostile_state', {state!r}, marker)
# What allowing the globals as they are (process-wide) would permit.
torch.serialization.add_safe_globals([getattr, HistoryBuffer])
try:
    torch.load({gadget!r})
except Exception:
    pass
torch.load({state!r})
mean = HistoryBuffer._statistics_methods['mean']
print('RESULT:' + json.dumps(dict(
    marker=os.path.exists(marker),
    mean=getattr(mean, '__qualname__', repr(mean)),
)))
"""


def test_catalogue_is_live_with_globals_allowed_as_they_are(tmp_path):
    """Control: without the stand-ins both payloads do their harm."""
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _CONTROL.format(
        tests=tests,
        marker=str(tmp_path / 'payload_ran'),
        gadget=str(tmp_path / 'gadget.pth'),
        state=str(tmp_path / 'state.pth'),
    )
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith('RESULT:')]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1][len('RESULT:') :])
    assert outcome == dict(marker=True, mean='_rebuild_tensor_v2')


# ---------------------------------------------------------------------------
# The process is left as it was found.
# ---------------------------------------------------------------------------

_ALLOWLIST_PROBE = """
import json, sys
import torch


def allowed():
    # torch adds its own entries when torch.distributed is imported.
    return sorted(
        str(g) for g in torch.serialization.get_safe_globals()
        if 'torch.' not in str(g)
    )


before = allowed()
import mmrevnet  # noqa: F401
after_import = allowed()
sys.path.insert(0, {tests!r})
from test_engine.test_checkpoint import _runner
runner = _runner({work_dir!r}, 1, resume=True, load_from={checkpoint!r})
runner.load_or_resume()
print('RESULT:' + json.dumps(dict(
    before=before, after_import=after_import, after_resume=allowed(),
    iter=runner.iter,
)))
"""


def test_import_and_resume_leave_allowlist_unchanged(
    trained_checkpoint, tmp_path
):
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _ALLOWLIST_PROBE.format(
        tests=tests,
        work_dir=str(tmp_path),
        checkpoint=str(trained_checkpoint),
    )
    result = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=180,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith('RESULT:')]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1][len('RESULT:') :])
    assert outcome['iter'] == 2
    assert outcome['after_import'] == outcome['before']
    assert outcome['after_resume'] == outcome['before']


def test_scoped_globals_are_removed_on_exit():
    # A set inside torch: its order may change when entries come and go.
    before = set(torch.serialization.get_safe_globals())
    with runner_checkpoint_globals():
        inside = torch.serialization.get_safe_globals()
        assert len(inside) > len(before)
    assert set(torch.serialization.get_safe_globals()) == before
    with pytest.raises(ValueError):
        with runner_checkpoint_globals():
            raise ValueError('unrelated errors pass through')
    assert set(torch.serialization.get_safe_globals()) == before


# ---------------------------------------------------------------------------
# Hostile files cost neither memory nor time (child process, capped).
# ---------------------------------------------------------------------------

#: Targets: clear error, peak RSS under 200 MB over the baseline, 5 s.
MAX_PEAK_RSS_MIB = 200
MAX_SECONDS = 5.0
#: The child's address space may grow by this much beyond its size after
#: the imports; a file that still multiplied memory hits MemoryError.
ADDRESS_SPACE_HEADROOM = 1 << 30


def test_hostile_files_are_cheap(tmp_path):
    """Every crafted pickle, through load_runner_checkpoint and resume.

    One child process loads all files, each under a time limit, with its
    address space capped; each case's peak RSS is its own (the high-water
    mark is reset before it).
    """
    cases = []
    for name in sorted(crafted.PICKLES):
        path = str(tmp_path / f'{name}.pth')
        crafted.craft(name, path, str(tmp_path / 'payload_ran'))
        cases.append((name, path))
    spec = tmp_path / 'spec.json'
    spec.write_text(
        json.dumps(
            dict(
                cases=cases,
                work_dir=str(tmp_path),
                address_space_headroom=ADDRESS_SPACE_HEADROOM,
                time_limit=2 * MAX_SECONDS,
            )
        )
    )
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, '-m', 'test_engine.load_hostile', str(spec)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tests,
    )
    rows = [
        json.loads(line[len('RESULT:') :])
        for line in result.stdout.splitlines()
        if line.startswith('RESULT:')
    ]
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(rows) == 2 * len(cases)
    assert not (tmp_path / 'payload_ran').exists()
    for row in rows:
        where = f'{row["name"]} via {row["loader"]}: {row}'
        assert row['error'] == 'UntrustedCheckpointError', where
        assert row['message'].startswith('Refused to load the checkpoint')
        assert REASONS[row['name']] in row['message'], where
        assert row['peak_rss_mib'] < MAX_PEAK_RSS_MIB, where
        assert row['seconds'] < MAX_SECONDS, where


def test_meta_config_runs_in_mmengine_resume(tmp_path):
    """Control: mmengine's own Runner executes ``meta['config']``."""
    from mmengine.runner import Runner

    path = str(tmp_path / 'config.pth')
    marker = tmp_path / 'payload_ran'
    crafted.craft('meta_config_code', path, str(marker))
    plain = _runner(tmp_path / 'plain', 1, runner_class=Runner)
    with pytest.raises(Exception):
        # The file loads (plain types only); resume then runs the config
        # before it fails on the missing message hub.
        plain.resume(path)
    assert marker.exists()
    marker.unlink()
    runner = _runner(tmp_path / 'work', 1)
    with pytest.raises(UntrustedCheckpointError, match='config'):
        runner.resume(path)
    assert not marker.exists()


def test_saved_config_text_is_accepted():
    """What ``Config.pretty_text`` writes passes the config check."""
    from mmengine.config import Config

    repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    config = Config.fromfile(
        os.path.join(
            repo,
            'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-'
            'cityscapes-128x256.py',
        )
    )
    check_checkpoint_objects({'meta': {'config': config.pretty_text}})
    with pytest.raises(UntrustedCheckpointError, match='holds Attribute'):
        check_checkpoint_objects({'meta': {'config': 'x = os.environ\n'}})


def test_max_elements_is_configurable(trained_checkpoint, monkeypatch):
    path = str(trained_checkpoint)
    assert safe_loading.default_max_elements() == 1 << 24
    with pytest.raises(UntrustedCheckpointError, match='max_elements=3 '):
        load_runner_checkpoint(path, max_elements=3)
    monkeypatch.setenv(safe_loading.MAX_ELEMENTS_ENV, '3')
    with pytest.raises(UntrustedCheckpointError, match='max_elements=3 '):
        load_runner_checkpoint(path)
    monkeypatch.setenv(safe_loading.MAX_ELEMENTS_ENV, 'junk')
    with pytest.raises(ValueError, match='must be a positive integer'):
        load_runner_checkpoint(path)
    monkeypatch.setenv(safe_loading.MAX_ELEMENTS_ENV, str(1 << 20))
    assert load_runner_checkpoint(path)['meta']['iter'] == 2


def test_forced_full_pickle_is_refused(trained_checkpoint, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 turns torch's check off: refuse."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    path = str(trained_checkpoint)
    with pytest.raises(UntrustedCheckpointError, match='FORCE_NO_WEIGHTS'):
        load_runner_checkpoint(path)
    runner = _runner(path + '.work', 1, resume=True, load_from=path)
    with pytest.raises(UntrustedCheckpointError, match='FORCE_NO_WEIGHTS'):
        runner.load_or_resume()
    # Nothing to load, nothing refused.
    _runner(path + '.scratch', 1)._init_model_weights()
