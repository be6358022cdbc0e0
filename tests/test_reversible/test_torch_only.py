"""``mmrevnet.reversible`` works where only torch is installed."""

import json
import subprocess
import sys
import textwrap

BLOCKED = ('mmengine', 'mmcv', 'mmseg', 'mmpretrain')

_PROBE = """
import importlib.abc
import json
import sys

BLOCKED = {blocked!r}


class Blocker(importlib.abc.MetaPathFinder):
    '''Makes the OpenMMLab packages look uninstalled.'''

    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ModuleNotFoundError(f'No module named {{name!r}}', name=name)
        return None


sys.meta_path.insert(0, Blocker())

import torch
from torch import nn

import mmrevnet
from mmrevnet.reversible import MomentumSequential

torch.manual_seed(0)
stage = MomentumSequential([nn.Linear(3, 3) for _ in range(4)], gamma=0.9)
x = torch.randn(5, 3, requires_grad=True)
stage(x).pow(2).sum().backward()
loaded = sorted(
    m for m in sys.modules if m.split('.')[0] in BLOCKED
)
print('RESULT:' + json.dumps(dict(
    grad=bool(x.grad.abs().sum() > 0),
    loaded=loaded,
    version=mmrevnet.__version__,
)))
"""


def test_reversible_imports_with_torch_only():
    result = subprocess.run(
        [
            sys.executable,
            '-c',
            textwrap.dedent(_PROBE.format(blocked=BLOCKED)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith('RESULT:')]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1][len('RESULT:') :])
    assert outcome['grad'] is True
    assert outcome['loaded'] == []


def test_blocker_really_blocks():
    """Control: with the blocker, importing mmengine fails."""
    code = _PROBE.format(blocked=BLOCKED).split('import torch')[0]
    code += 'import mmengine\n'
    result = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No module named 'mmengine'" in result.stderr
