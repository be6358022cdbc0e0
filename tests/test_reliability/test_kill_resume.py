"""The training tool killed at 10 random moments resumes every time.

``kill_loop.py`` runs ``tools/train.py`` (a small model with a 4 MB
checkpoint saved every iteration, generated data, ``--resume``) and kills
it with SIGKILL 10 times (with seed 0: 5 while saving, 3 while starting,
2 while training): while it starts and resumes, at a random moment
of training, or while ``torch.save`` writes a checkpoint. Each next run
must resume from the newest complete checkpoint and name every truncated
file it skips; after the last kill a run trains to its end and must give
exactly (``torch.equal``) the weights and optimizer state of a run that
was never interrupted.
"""

import json
import os.path as osp
import re
import subprocess
import sys
from collections import Counter

import pytest

pytestmark = pytest.mark.slow

KILLS = 10
SEED = 0


def _iteration(name):
    return int(re.match(r'iter_(\d+)\.pth', name).group(1))


def _expected_resume(files, last_checkpoint):
    """What last_checkpoint names if complete, else the newest complete."""
    if last_checkpoint in files and files[last_checkpoint] is None:
        return last_checkpoint
    complete = [name for name, problem in files.items() if problem is None]
    return max(complete, key=_iteration) if complete else None


def test_killed_training_resumes(tmp_path):
    spec = tmp_path / 'spec.json'
    spec.write_text(
        json.dumps(
            dict(
                seed=SEED,
                root=str(tmp_path),
                kills=KILLS,
                delay=1.0,
                startup_delay=0.4,
                final_iterations=2,
            )
        )
    )
    tests = osp.dirname(osp.dirname(osp.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, '-m', 'test_reliability.kill_loop', str(spec)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tests,
    )
    lines = [x for x in result.stdout.splitlines() if x.startswith('RESULT:')]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    outcome = json.loads(lines[-1][len('RESULT:') :])
    rounds, final = outcome['rounds'], outcome['final']
    assert len(rounds) == KILLS
    truncated = 0
    before, pointer = {}, None
    for index, run in enumerate(rounds + [final]):
        where = f'run {index}: {run}'
        if run is not final:
            assert run['killed'], where  # it did not stop by itself
            truncated += any(run['files'].values())
        if run['resumed'] is not None or run is final:
            # Resumed from the file last_checkpoint names or, where that is
            # unusable, the newest complete one; every truncated newer one
            # named.
            assert run['resumed'] == _expected_resume(before, pointer), where
            for name, problem in before.items():
                if problem and _iteration(name) > _iteration(run['resumed']):
                    assert any(
                        name in note and 'truncated' in note
                        for note in run['notes']
                    ), where
        if run is not final:
            before, pointer = run['files'], run['last_checkpoint']
    assert truncated >= 1, 'no kill landed inside a save'
    assert final['exit_status'] == 0, final['tail']
    assert final['reference_exit_status'] == 0
    assert final['differing'] == [], final
    moments = Counter(run['moment'] for run in rounds)
    assert set(moments) == {'startup', 'training', 'saving'}, moments
    print(
        f'\nkills: {dict(moments)}; kills that left a truncated checkpoint: '
        f'{truncated}; resumed runs: '
        f'{sum(r["resumed"] is not None for r in rounds)}; '
        f'final iteration {final["final_iters"]}, bit-equal to the '
        'uninterrupted run'
    )
