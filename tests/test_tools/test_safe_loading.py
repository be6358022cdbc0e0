"""``tools/test.py`` refuses crafted checkpoints and runs no payload.

The same catalogue as ``tests/test_engine/test_checkpoint.py``, through the
command a user runs on a downloaded checkpoint. The genuine checkpoint of
the same config is evaluated by ``test_segmentation_e2e.py``.
"""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from test_engine import crafted_checkpoints as crafted

from .helpers import REPO, cli_options, config_path, tiny_options

pytestmark = pytest.mark.slow


def _run_test_script(checkpoint, options, work_dir):
    return subprocess.run(
        [
            sys.executable,
            'tools/test.py',
            config_path('pspnet', 'cityscapes'),
            checkpoint,
            '--work-dir',
            work_dir,
            '--cfg-options',
            *cli_options(options),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_test_script_refuses_crafted_checkpoints(data_roots, tmp_path):
    options = tiny_options('pspnet', 'cityscapes', data_roots['cityscapes'])
    marker = tmp_path / 'payload_ran'
    jobs = {}
    for name in crafted.ALL:
        path = str(tmp_path / f'{name}.pth')
        crafted.craft(name, path, str(marker))
        jobs[name] = (path, options, str(tmp_path / name))
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(
            zip(
                jobs,
                pool.map(lambda job: _run_test_script(*job), jobs.values()),
            )
        )
    for name, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode != 0, (name, output[-3000:])
        if name in crafted.PICKLES:
            # One error line from the tool, no traceback: the object
            # check refuses the file before the strict key check sees it.
            assert 'error: Refused to load' in result.stderr, (
                name,
                output[-3000:],
            )
            assert 'Traceback' not in result.stderr, (name, output[-3000:])
    assert not marker.exists()
