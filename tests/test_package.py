"""The boundary of the installed package.

The wheel holds ``mmrevnet`` only; the studies (``benchmarks/``), tools and
tests stay in the repository, and ``import mmrevnet`` loads none of them.
"""

import os.path as osp
import subprocess
import sys
from unittest import mock

import setuptools

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_wheel_holds_only_the_library():
    captured = {}
    with mock.patch.object(setuptools, 'setup', captured.update):
        path = osp.join(REPO, 'setup.py')
        with open(path) as f:
            code = compile(f.read(), path, 'exec')
        exec(code, {'__file__': path, '__name__': '__main__'})
    packages = captured['packages']
    assert 'mmrevnet' in packages
    assert 'mmrevnet.reversible' in packages
    assert all(p == 'mmrevnet' or p.startswith('mmrevnet.') for p in packages)


def test_import_loads_no_study_tool_or_plotting_code():
    code = (
        'import sys, mmrevnet; '
        'print(sorted(m for m in sys.modules if m.split(".")[0] in '
        '("benchmarks", "tools", "matplotlib") or '
        'm.startswith("mmrevnet.datasets")))'
    )
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == '[]'
