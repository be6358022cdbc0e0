"""Tests of mmrevnet.compat: the mmcv-lite ``mmcv.ops`` shim.

Every test here fails without the shim: the "breakage" tests show, in a
subprocess that does not import mmrevnet, that the problem exists in this
environment (and skip, with the reason, where it does not), and the other
tests show that ``import mmrevnet`` fixes it. Checkpoint loading is tested
in ``tests/test_engine/test_checkpoint.py``.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

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

# Without mmrevnet: the breakage must show up here.
_PROBE_WITHOUT = """
# This environment has mmrevnet's import hook installed (its .pth runs at
# start-up); without mmrevnet means without the hook too.
for _finder in list(sys.meta_path):
    if getattr(_finder, '__module__', '') == '_mmrevnet_import_hook':
        sys.meta_path.remove(_finder)


def import_mmseg_models():
    import mmseg.models  # noqa: F401

    return 'imported'


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
def probes():
    """Run both probe scripts in subprocesses, concurrently.

    ``without``: a fresh interpreter that never imports mmrevnet;
    ``with``: one that imports mmrevnet first.
    """
    with_proc = start_python(
        _PROBE_PRELUDE + f'ENV_NAMES = {WEIGHTS_ONLY_ENV!r}\n' + _PROBE_WITH
    )
    without_proc = start_python(_PROBE_PRELUDE + _PROBE_WITHOUT)
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


def test_import_does_not_switch_weights_only_off(probes):
    """``import mmrevnet`` must not set TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    assert probes['with_']['weights_only_env'] == []
