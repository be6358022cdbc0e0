"""SIGKILL ``tools/train.py`` at random moments, resume each time.

Run by ``test_kill_resume.py`` as ``python -m test_reliability.kill_loop
SPEC.json`` with ``tests/`` as the working directory. This process imports
torch, mmengine and the tool once and then forks one child per run, so a
run starts in well under a second. Each child is the training tool itself
(``tools/train.py``'s ``main`` with its command line: ``--resume`` and the
kill-loop config, a checkpoint every iteration). The parent kills it with
SIGKILL after a delay drawn from a seeded generator, notes what the kill
left in the work dir, and starts the next run, which resumes. After the
last kill a run trains a few iterations to its end, and a run that was
never interrupted trains to the same iteration for comparison.

Prints one ``RESULT:`` line of JSON.
"""

import importlib.util
import json
import os
import os.path as osp
import random
import signal
import sys
import time
import traceback

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(osp.dirname(osp.abspath(__file__)), 'kill_loop_config.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        'mmrevnet_train_tool', osp.join(REPO, 'tools', 'train.py')
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def start_tool(tool, work_dir: str, max_iters: int, log: str) -> int:
    """Fork a child that runs the training tool; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [
            'tools/train.py',
            CONFIG,
            '--work-dir',
            work_dir,
            '--resume',
            '--skip-data-check',
            '--cfg-options',
            f'train_cfg.max_iters={max_iters}',
        ]
        tool.main()
        code = 0
    except SystemExit as error:
        print(f'SystemExit: {error.code}', flush=True)
        code = 2
    except BaseException:  # noqa: BLE001 (reported in the log)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _inventory(work_dir: str) -> dict:
    from mmrevnet.engine.checkpoint import checkpoint_file_problem

    files = {}
    for name in sorted(os.listdir(work_dir)):
        if name.endswith('.pth'):
            files[name] = checkpoint_file_problem(osp.join(work_dir, name))
    pointer = osp.join(work_dir, 'last_checkpoint')
    named = None
    if osp.exists(pointer):
        with open(pointer) as f:
            named = osp.basename(f.read().strip())
    return dict(files=files, last_checkpoint=named)


_NOTES = ('is not used:', 'but it is', 'is empty', 'instead', 'from scratch')


def _log_notes(log: str) -> dict:
    with open(log, errors='replace') as f:
        text = f.read()
    resumed = None
    for line in text.splitlines():
        if 'Resuming from ' in line:
            resumed = osp.basename(line.rsplit('Resuming from ', 1)[1])
    notes = [
        line.split(' - ', 2)[-1].strip()
        for line in text.splitlines()
        if any(note in line for note in _NOTES)
    ]
    return dict(resumed=resumed, notes=notes, tail=text[-1500:])


def _wait(pid: int, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _state(path: str) -> dict:
    from mmrevnet.engine import load_runner_checkpoint

    checkpoint = load_runner_checkpoint(path)
    state = {f'model.{k}': v for k, v in checkpoint['state_dict'].items()}
    for index, value in checkpoint['optimizer']['state'].items():
        for key, tensor in value.items():
            state[f'optimizer.{index}.{key}'] = tensor
    return state


def _wait_for(predicate, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.001)
    return False


def _trained(log: str) -> bool:
    with open(log, errors='replace') as f:
        return 'Epoch(train)' in f.read()


def _kill_moment(rng, spec, log: str, work_dir: str) -> str:
    """Wait until the moment of this run's kill; returns its kind.

    ``startup``: a random time after the start (building the runner,
    resuming); ``training``: a random time after the first iteration;
    ``saving``: when a checkpoint file appears that was not there before
    (after 0 to 2 more saves), while torch.save is still writing it.
    """
    kind = rng.choices(('startup', 'training', 'saving'), (1, 2, 1))[0]
    if kind == 'startup':
        time.sleep(rng.uniform(0.0, spec['startup_delay']))
        return kind
    _wait_for(lambda: _trained(log))
    if kind == 'training':
        time.sleep(rng.uniform(0.0, spec['delay']))
        return kind
    for _ in range(rng.randint(1, 3)):
        before = set(os.listdir(work_dir))
        _wait_for(
            lambda: any(
                name.endswith('.pth') and name not in before
                for name in os.listdir(work_dir)
            )
        )
    return kind


def main(spec_file: str) -> None:
    with open(spec_file) as f:
        spec = json.load(f)
    torch.set_num_threads(1)
    # Imported once, before forking: what the tool and the Runner import,
    # including what the Runner imports only when it starts (the
    # environment report imports torchvision and the distutils compiler
    # classes, the visualizer matplotlib).
    import distutils.ccompiler  # noqa: F401

    import matplotlib.backends.backend_agg  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import mmengine.runner  # noqa: F401
    import torchvision  # noqa: F401

    import mmrevnet.engine  # noqa: F401
    import test_reliability.fault_toy  # noqa: F401
    from mmrevnet.engine.checkpoint import find_resumable_checkpoint

    tool = _load_tool()
    rng = random.Random(spec['seed'])
    work_dir = osp.join(spec['root'], 'killed')
    os.makedirs(work_dir)
    rounds = []
    for index in range(spec['kills']):
        log = osp.join(spec['root'], f'run_{index}.log')
        open(log, 'w').close()
        start = time.monotonic()
        pid = start_tool(tool, work_dir, 100000, log)
        kind = _kill_moment(rng, spec, log, work_dir)
        os.kill(pid, signal.SIGKILL)
        status = os.waitpid(pid, 0)[1]
        row = dict(
            moment=kind,
            after=time.monotonic() - start,
            killed=os.WIFSIGNALED(status),
        )
        if not row['killed']:
            row['exit_status'] = os.waitstatus_to_exitcode(status)
        row.update(_log_notes(log))
        row.update(_inventory(work_dir))
        rounds.append(row)
    latest = find_resumable_checkpoint(work_dir, report=lambda m: None)
    reached = int(osp.basename(latest)[5:-4]) if latest else 0
    final_iters = reached + spec['final_iterations']
    log = osp.join(spec['root'], 'final.log')
    status = _wait(start_tool(tool, work_dir, final_iters, log), 120)
    final = dict(exit_status=os.waitstatus_to_exitcode(status))
    final.update(_log_notes(log))
    reference_dir = osp.join(spec['root'], 'uninterrupted')
    log = osp.join(spec['root'], 'reference.log')
    status = _wait(start_tool(tool, reference_dir, final_iters, log), 120)
    final['reference_exit_status'] = os.waitstatus_to_exitcode(status)
    name = f'iter_{final_iters}.pth'
    differing = None
    if final['exit_status'] == 0 and final['reference_exit_status'] == 0:
        resumed = _state(osp.join(work_dir, name))
        straight = _state(osp.join(reference_dir, name))
        differing = sorted(
            key
            for key in straight
            if key not in resumed
            or not torch.equal(resumed[key], straight[key])
        )
    final.update(final_iters=final_iters, differing=differing)
    print('RESULT:' + json.dumps(dict(rounds=rounds, final=final)), flush=True)


if __name__ == '__main__':
    main(sys.argv[1])
