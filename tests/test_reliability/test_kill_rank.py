"""A DDP rank killed with SIGKILL: the other rank and torchrun exit soon.

``tools/dist_train.sh`` trains the kill-loop config (a small model,
generated data) on 2 CPU processes; once both train, rank 1 is killed.
torchrun's agent notices the dead worker and stops the others; the whole
job must be gone within 60 s (no rank left waiting in a collective).
"""

import os
import os.path as osp
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch

from .helpers import REPO, free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason='CPU (gloo) ranks'),
]

CONFIG = osp.join(osp.dirname(osp.abspath(__file__)), 'kill_loop_config.py')
MAX_EXIT_SECONDS = 60


def _ranks(root: psutil.Process) -> dict:
    ranks = {}
    for child in root.children(recursive=True):
        try:
            rank = child.environ().get('RANK')
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if rank is not None and 'train.py' in ' '.join(child.cmdline()):
            ranks[int(rank)] = child
    return ranks


def _trained_two_iterations(work_dir) -> bool:
    names = work_dir.glob('iter_*.pth') if work_dir.is_dir() else ()
    return any(int(path.stem[len('iter_') :]) >= 2 for path in names)


def test_killed_rank_ends_the_job(tmp_path):
    work_dir = tmp_path / 'work'
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PORT=str(free_port()),
        PYTHONPATH=osp.join(REPO, 'tests'),
        OMP_NUM_THREADS='1',
    )
    log = open(tmp_path / 'job.log', 'w')
    job = subprocess.Popen(
        [
            'bash',
            osp.join(REPO, 'tools', 'dist_train.sh'),
            CONFIG,
            '2',
            '--work-dir',
            str(work_dir),
            '--skip-data-check',
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        # Both ranks are training once rank 0 has saved the checkpoint of
        # a second iteration (a collective of both ranks precedes every
        # step). Older checkpoints are deleted as training goes on
        # (max_keep_ckpts), so any iteration from the second counts.
        while not _trained_two_iterations(work_dir):
            assert job.poll() is None, (tmp_path / 'job.log').read_text()
            assert time.monotonic() < deadline, 'training did not start'
            time.sleep(0.2)
        ranks = _ranks(psutil.Process(job.pid))
        assert sorted(ranks) == [0, 1], ranks
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        job.wait(timeout=MAX_EXIT_SECONDS + 30)
        took = time.monotonic() - killed
        _, alive = psutil.wait_procs([ranks[0]], timeout=5)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / 'job.log').read_text()
    assert job.returncode != 0, text[-3000:]
    assert not alive, 'rank 0 outlived the job'
    assert took < MAX_EXIT_SECONDS, f'{took:.1f} s\n{text[-3000:]}'
    print(f'\njob gone {took:.1f} s after rank 1 was killed')
