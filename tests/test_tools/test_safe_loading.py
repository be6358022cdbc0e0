"""``tools/test.py`` refuses crafted checkpoints and runs no payload.

One file of each way of refusing from the catalogue that
``tests/test_engine/test_checkpoint.py`` loads in full, through the command
a user runs on a downloaded checkpoint. The genuine checkpoint of the same
config is evaluated by ``test_segmentation_e2e.py``.
"""

import subprocess
import sys

import pytest
from test_engine import crafted_checkpoints as crafted
from tool_process import run_tools

from .helpers import REPO, cli_options, config_path, tiny_options

pytestmark = pytest.mark.slow


def _test_script_args(checkpoint, options, work_dir):
    return [
        'tools/test.py',
        config_path('pspnet', 'cityscapes'),
        checkpoint,
        '--work-dir',
        work_dir,
        '--cfg-options',
        *cli_options(options),
    ]


#: One crafted file per refusal path: a global torch's unpickler refuses (a
#: payload), a stand-in of mmengine's objects refusing its state, a size
#: refused before allocating, a file torch accepts that the project's
#: object check refuses, and a damaged archive.
REFUSAL_PATHS = (
    'os_system_global',
    'history_buffer_hostile_state',
    'array_shape_2e61x8',
    'reference_cycle',
    'zip_truncated_storage',
)


def test_refusal_paths_are_in_the_catalogue():
    assert set(REFUSAL_PATHS) <= set(crafted.ALL)
    assert crafted.ACCEPTED_BY_TORCH & set(REFUSAL_PATHS)
    assert crafted.AMPLIFYING & set(REFUSAL_PATHS)
    assert set(crafted.ARCHIVES) & set(REFUSAL_PATHS)


def test_test_script_refuses_crafted_checkpoints(data_roots, tmp_path):
    options = tiny_options('pspnet', 'cityscapes', data_roots['cityscapes'])
    marker = tmp_path / 'payload_ran'
    jobs = {}
    for name in REFUSAL_PATHS:
        path = str(tmp_path / f'{name}.pth')
        crafted.craft(name, path, str(marker))
        jobs[name] = (path, options, str(tmp_path / name))
    # Every file through the tool's command line in one process that
    # forks a run per file (tests/tool_process.py); the first pickle file
    # also through a real ``python tools/test.py``.
    results = dict(
        zip(
            jobs,
            run_tools([_test_script_args(*job) for job in jobs.values()]),
        )
    )
    first = next(name for name in jobs if name in crafted.PICKLES)
    results[f'{first} (python tools/test.py)'] = subprocess.run(
        [sys.executable, *_test_script_args(*jobs[first])],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    for name, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode != 0, (name, output[-3000:])
        if name.split(' ')[0] in crafted.PICKLES:
            # One error line from the tool, no traceback: the object
            # check refuses the file before the strict key check sees it.
            assert 'error: Refused to load' in result.stderr, (
                name,
                output[-3000:],
            )
            assert 'Traceback' not in result.stderr, (name, output[-3000:])
    assert not marker.exists()
