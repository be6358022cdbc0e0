"""Tests of mmrevnet.compat: the shims for mmcv-lite and torch>=2.6 loading.

Every test here fails without the corresponding shim: the "breakage" tests
show, in a subprocess that does not import mmrevnet, that the problem exists
in this environment (and skip, with the reason, where it does not), and the
other tests show that ``import mmrevnet`` fixes it without switching torch's
``weights_only`` safety off for anything else.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap
import uuid

import pytest
import torch
from mmengine.model import BaseModel
from mmengine.registry import MODELS
from torch.utils.data import Dataset

import mmrevnet  # noqa: F401  (applies the shims)
from mmrevnet import compat

WEIGHTS_ONLY_ENV = (
    'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD',
    'TORCH_FORCE_WEIGHTS_ONLY_LOAD',
)
TORCH_VERSION = tuple(
    int(part) for part in torch.__version__.split('+')[0].split('.')[:2]
)


def _clean_env():
    """The current environment without torch's weights_only overrides."""
    env = dict(os.environ)
    for name in WEIGHTS_ONLY_ENV:
        env.pop(name, None)
    return env


def start_python(code):
    """Start ``code`` in a fresh interpreter (clean weights_only env)."""
    return subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_clean_env(),
    )


def probe_results(proc, timeout=180):
    """Wait for a probe script; return the dict it printed as RESULT: json."""
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith('RESULT:')]
    assert proc.returncode == 0 and lines, (
        f'probe failed ({proc.returncode}):\n'
        f'--- stdout\n{stdout}\n--- stderr\n{stderr}'
    )
    return json.loads(lines[-1][len('RESULT:') :])


# Shared by the probe scripts: run a step, record its outcome as JSON.
_PROBE_PRELUDE = """
import json
import sys

results = {}


def step(name, func):
    try:
        value = func()
    except BaseException as e:
        results[name] = dict(
            error=type(e).__name__,
            message=str(e),
            name=getattr(e, 'name', None),
        )
    else:
        results[name] = dict(value=value)
"""

# Without mmrevnet: both breakages must show up here.
_PROBE_WITHOUT = """
def load_checkpoint():
    import torch

    torch.load(CKPT)
    return 'loaded'


def import_mmseg_models():
    import mmseg.models  # noqa: F401

    return 'imported'


step('torch_load', load_checkpoint)
step('mmseg_models', import_mmseg_models)
results['mmrevnet_imported'] = 'mmrevnet' in sys.modules
print('RESULT:' + json.dumps(results))
"""

# With mmrevnet: everything that the shims promise.
_PROBE_WITH = """
import os

import mmrevnet  # noqa: F401

results['weights_only_env'] = [n for n in ENV_NAMES if n in os.environ]


def import_mmseg_models():
    import mmseg.models  # noqa: F401
    from mmseg.models.decode_heads import PSPHead, UPerHead  # noqa: F401
    from mmseg.models.losses import FocalLoss  # noqa: F401

    return 'imported'


def point_sample():
    import torch
    from mmcv.ops import point_sample

    out = point_sample(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 2))
    return list(out.shape)


def compiled_op():
    from mmcv.ops import CrissCrossAttention  # noqa: F401

    return 'imported'


def focal_loss():
    import mmcv.ops
    import torch

    mmcv.ops.sigmoid_focal_loss(torch.zeros(1, 2), torch.zeros(1))
    return 'ran'


def second_patch():
    from mmrevnet import compat

    return compat.patch_mmcv_lite_ops()


step('mmseg_models', import_mmseg_models)
step('point_sample', point_sample)
step('compiled_op', compiled_op)
step('focal_loss', focal_loss)
step('second_patch', second_patch)
print('RESULT:' + json.dumps(results))
"""


@pytest.fixture(autouse=True)
def _default_weights_only(monkeypatch):
    """Let torch.load use its real default, whatever the outer env says."""
    for name in WEIGHTS_ONLY_ENV:
        monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------
# 1. mmcv-lite: `import mmseg.models` needs mmcv.ops without mmcv._ext.
# ---------------------------------------------------------------------------


def _full_mmcv_installed():
    import importlib.util

    return importlib.util.find_spec('mmcv._ext') is not None


needs_mmcv_lite = pytest.mark.skipif(
    _full_mmcv_installed(),
    reason='full mmcv with compiled mmcv._ext is installed: the mmcv-lite '
    'breakage (and its shim) does not apply',
)


@pytest.fixture(scope='module')
def probes(request):
    """Run both probe scripts in subprocesses, concurrently.

    ``without``: a fresh interpreter that never imports mmrevnet;
    ``with``: one that imports mmrevnet first.
    """
    with_proc = start_python(
        _PROBE_PRELUDE + f'ENV_NAMES = {WEIGHTS_ONLY_ENV!r}\n' + _PROBE_WITH
    )
    # Train the toy checkpoint in-process while the first probe imports.
    try:
        ckpt = request.getfixturevalue('trained_checkpoint')
    except BaseException:
        with_proc.kill()
        with_proc.communicate()
        raise
    without_proc = start_python(
        _PROBE_PRELUDE + f'CKPT = {str(ckpt)!r}\n' + _PROBE_WITHOUT
    )
    return dict(
        without=probe_results(without_proc), with_=probe_results(with_proc)
    )


@needs_mmcv_lite
def test_mmseg_models_import_breaks_without_mmrevnet(probes):
    assert probes['without']['mmrevnet_imported'] is False
    outcome = probes['without']['mmseg_models']
    assert outcome.get('error') == 'ModuleNotFoundError', outcome
    assert 'mmcv._ext' in outcome['message'], outcome


@needs_mmcv_lite
def test_mmseg_models_import_works_with_mmrevnet(probes):
    assert probes['with_']['mmseg_models'] == dict(value='imported')
    # mmcv.ops.point_sample is pure PyTorch and must keep working.
    assert probes['with_']['point_sample'] == dict(value=[1, 2, 3])


@needs_mmcv_lite
def test_compiled_ops_raise_module_not_found(probes):
    """mmseg guards its other op imports: ``except ModuleNotFoundError``."""
    outcome = probes['with_']['compiled_op']
    assert outcome.get('error') == 'ModuleNotFoundError', outcome
    assert outcome['name'] == 'mmcv._ext', outcome


@needs_mmcv_lite
def test_sigmoid_focal_loss_raises_clear_error(probes):
    outcome = probes['with_']['focal_loss']
    assert outcome.get('error') == 'RuntimeError', outcome
    assert 'sigmoid_focal_loss' in outcome['message'], outcome
    assert 'mmcv-lite' in outcome['message'], outcome


@needs_mmcv_lite
def test_second_patch_is_noop(probes):
    assert probes['with_']['second_patch'] == dict(value=False)


def test_patch_mmcv_lite_ops_is_idempotent():
    # Already applied by `import mmrevnet` (or not needed with full mmcv).
    assert compat.patch_mmcv_lite_ops() is False
    assert compat.patch_mmcv_lite_ops() is False


# ---------------------------------------------------------------------------
# 2. torch >= 2.6 weights_only default and mmengine checkpoints.
# ---------------------------------------------------------------------------

_MODEL_NAME = f'CompatToyModel_{uuid.uuid4().hex[:8]}'


@MODELS.register_module(name=_MODEL_NAME)
class CompatToyModel(BaseModel):
    """A linear layer as an mmengine model (registered under a unique name)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(torch.stack(inputs))
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


def _runner_cfg(work_dir, max_iters, **kwargs):
    cfg = dict(
        model=dict(type=_MODEL_NAME),
        work_dir=str(work_dir),
        experiment_name=f'test_compat_{uuid.uuid4().hex[:8]}',
        # Do not leave a default scope behind for other tests.
        default_scope=None,
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='pseudo_collate'),
            batch_size=4,
            num_workers=0,
        ),
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False),
        ),
        launcher='none',
        env_cfg=dict(cudnn_benchmark=False),
        randomness=dict(seed=0),
    )
    cfg.update(kwargs)
    return cfg


def _build_runner(work_dir, max_iters, **kwargs):
    from mmengine.runner import Runner

    return Runner(**_runner_cfg(work_dir, max_iters, **kwargs))


@pytest.fixture(scope='module')
def trained_checkpoint(tmp_path_factory):
    """Train the toy model for 2 iterations with a real mmengine Runner."""
    work_dir = tmp_path_factory.mktemp('compat_runner')
    runner = _build_runner(work_dir, max_iters=2)
    runner.train()
    ckpt = work_dir / 'iter_2.pth'
    assert ckpt.is_file(), sorted(p.name for p in work_dir.iterdir())
    return ckpt


def _state_dict_on_disk(ckpt):
    return torch.load(ckpt, map_location='cpu')['state_dict']


def _assert_same_weights(model, state_dict):
    own = model.state_dict()
    assert own.keys() == state_dict.keys()
    for key, value in state_dict.items():
        torch.testing.assert_close(own[key], value, msg=key)


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason=f'torch {torch.__version__} < 2.6 does not default to '
    'torch.load(weights_only=True): no breakage to show',
)
def test_checkpoint_load_breaks_without_mmrevnet(probes):
    assert probes['without']['mmrevnet_imported'] is False
    outcome = probes['without']['torch_load']
    assert outcome.get('error') == 'UnpicklingError', outcome
    assert 'HistoryBuffer' in outcome['message'], outcome


def test_torch_load_default_weights_only_works(trained_checkpoint):
    ckpt = torch.load(trained_checkpoint)  # weights_only: torch's default
    assert ckpt['meta']['iter'] == 2
    assert 'message_hub' in ckpt
    if TORCH_VERSION >= (2, 6):
        # The checkpoint really is loaded under weights_only=True.
        ckpt = torch.load(trained_checkpoint, weights_only=True)
        assert ckpt['meta']['iter'] == 2


def test_runner_resume(trained_checkpoint):
    work_dir = trained_checkpoint.parent
    runner = _build_runner(
        work_dir, max_iters=3, resume=True, load_from=str(trained_checkpoint)
    )
    runner.load_or_resume()
    assert runner.iter == 2
    _assert_same_weights(runner.model, _state_dict_on_disk(trained_checkpoint))
    runner.train()
    assert runner.iter == 3
    assert (work_dir / 'iter_3.pth').is_file()


def test_runner_resume_auto_finds_last_checkpoint(
    trained_checkpoint, tmp_path
):
    import shutil

    shutil.copy(trained_checkpoint, tmp_path / 'iter_2.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_2.pth'))
    runner = _build_runner(tmp_path, max_iters=3, resume=True)
    runner.load_or_resume()
    assert runner.iter == 2


def test_runner_load_from(trained_checkpoint, tmp_path):
    runner = _build_runner(
        tmp_path, max_iters=2, load_from=str(trained_checkpoint)
    )
    runner.load_or_resume()
    assert runner.iter == 0  # weights only, no training state
    _assert_same_weights(runner.model, _state_dict_on_disk(trained_checkpoint))


def test_mmengine_load_checkpoint(trained_checkpoint):
    """The path taken by ``init_cfg=dict(type='Pretrained', ...)``."""
    from mmengine.runner import load_checkpoint

    model = CompatToyModel()
    with torch.no_grad():
        model.linear.weight.fill_(123.0)
    checkpoint = load_checkpoint(
        model, str(trained_checkpoint), map_location='cpu'
    )
    assert checkpoint['meta']['iter'] == 2
    _assert_same_weights(model, _state_dict_on_disk(trained_checkpoint))


def test_pretrained_init_cfg(trained_checkpoint):
    model = CompatToyModel(
        init_cfg=dict(type='Pretrained', checkpoint=str(trained_checkpoint))
    )
    model.init_weights()
    _assert_same_weights(model, _state_dict_on_disk(trained_checkpoint))


class UnlistedObject:
    """A class nobody allowed in torch.load(weights_only=True)."""

    def __init__(self, value):
        self.value = value


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason=f'torch {torch.__version__} < 2.6 does not default to '
    'torch.load(weights_only=True)',
)
def test_weights_only_still_enforced_for_other_globals(tmp_path):
    path = tmp_path / 'unlisted.pth'
    torch.save({'obj': UnlistedObject(3)}, path)
    with pytest.raises(pickle.UnpicklingError, match='UnlistedObject'):
        torch.load(path)
    # Explicitly unsafe loading still works, i.e. the file itself is fine.
    assert torch.load(path, weights_only=False)['obj'].value == 3


def test_import_does_not_switch_weights_only_off(probes):
    """``import mmrevnet`` must not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    assert probes['with_']['weights_only_env'] == []
