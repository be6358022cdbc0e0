"""Run several command lines of the repository's tools in one process.

Starting ``python tools/test.py ...`` costs several seconds before the tool
does anything (interpreter start, importing torch, mmengine, mmseg). Tests
that check what a tool says on many inputs run it through
:func:`run_tools`: one Python process imports those modules once, then
forks one child per command line. A child is the tool run as a script:
``sys.argv`` set, the script executed as ``__main__`` (``runpy``), its
stdout and stderr captured, and its exit status worked out the way the
interpreter does (``sys.exit('message')`` prints the message and exits 1,
an uncaught exception prints its traceback and exits 1). Each child starts
from the parent's freshly imported state, so one run cannot see another's
loggers, visualizers or registrations.

Tests that use it keep at least one real ``python tools/...`` subprocess
for the same tool, so that the script's own start-up stays tested.

Run as ``python tests/tool_process.py SPEC.json``; the spec lists the
modules to import first and the command lines; one ``RESULT:`` line of
JSON is printed.
"""

import importlib
import json
import os
import os.path as osp
import runpy
import subprocess
import sys
import tempfile
import time
import traceback
from typing import List, Optional, Sequence

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: Imported before forking: what the tools and mmengine's Runner import
#: (its environment report the distutils compiler classes, its visualizer
#: matplotlib), ``mmrevnet`` before
#: mmseg (it applies the mmcv-lite shim) as the tools do.
SEGMENTATION = (
    'torch',
    'torch._dynamo',
    'torchvision',
    'distutils.ccompiler',
    'torch.utils.cpp_extension',
    'matplotlib.backends.backend_agg',
    'matplotlib.figure',
    'mmengine.runner',
    'mmrevnet',
    'mmrevnet.engine',
    'mmseg.models',
    'mmseg.datasets',
    'mmseg.engine',
    'mmseg.evaluation',
    'mmseg.visualization',
)
CLASSIFICATION = (
    'torch',
    'torch._dynamo',
    'torchvision',
    'distutils.ccompiler',
    'torch.utils.cpp_extension',
    'matplotlib.backends.backend_agg',
    'matplotlib.figure',
    'mmengine.runner',
    'mmrevnet',
    'mmrevnet.engine',
    'mmpretrain.models',
    'mmpretrain.datasets',
    'mmpretrain.engine',
    'mmpretrain.evaluation',
)


def _exit_status(code) -> int:
    """The exit status the interpreter gives ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(argv: List[str], stdout: str, stderr: str) -> None:
    """Run ``python *argv`` from the repository root; never returns."""
    status = 1
    try:
        for fd, path in ((1, stdout), (2, stderr)):
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(handle, fd)
            os.close(handle)
        os.chdir(REPO)
        script = osp.abspath(argv[0])
        sys.argv = list(argv)
        # ``python tools/x.py`` puts the script's folder first on sys.path.
        sys.path[0] = osp.dirname(script)
        try:
            runpy.run_path(script, run_name='__main__')
            status = 0
        except SystemExit as error:
            status = _exit_status(error.code)
        except BaseException:  # noqa: BLE001 (printed as Python does)
            traceback.print_exc()
            status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001, S110 (exiting anyway)
                pass
        os._exit(status)


def _wait_any(running: dict, timeout: float) -> None:
    """Reap one finished child of ``running`` (pid -> job), in place."""
    while True:
        for pid, job in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                job['returncode'] = os.waitstatus_to_exitcode(status)
                del running[pid]
                return
            if time.monotonic() - job['start'] > timeout:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                job['returncode'] = -9
                job['timed_out'] = True
                del running[pid]
                return
        time.sleep(0.01)


def main(spec_file: str) -> None:
    with open(spec_file) as f:
        spec = json.load(f)
    # The tools' own modules import from the repository root; the scripts
    # put it on sys.path themselves, so it is taken off again.
    sys.path.insert(0, REPO)
    for module in spec['preload']:
        importlib.import_module(module)
    sys.path.remove(REPO)
    sys.stdout.flush()
    sys.stderr.flush()
    jobs, running, pending = [], {}, list(enumerate(spec['commands']))
    folder = spec['folder']
    while pending or running:
        if pending and len(running) < spec['workers']:
            index, argv = pending.pop(0)
            job = dict(
                argv=argv,
                stdout=osp.join(folder, f'{index}.out'),
                stderr=osp.join(folder, f'{index}.err'),
                start=time.monotonic(),
            )
            jobs.append(job)
            pid = os.fork()
            if pid == 0:
                _child(argv, job['stdout'], job['stderr'])
            running[pid] = job
        else:
            _wait_any(running, spec['timeout'])
    results = []
    for job in jobs:
        texts = []
        for key in ('stdout', 'stderr'):
            with open(job[key], errors='replace') as f:
                texts.append(f.read())
        results.append(
            dict(
                argv=job['argv'],
                returncode=job['returncode'],
                stdout=texts[0],
                stderr=texts[1],
                timed_out=job.get('timed_out', False),
            )
        )
    print('RESULT:' + json.dumps(results), flush=True)


def run_tools(
    commands: Sequence[Sequence],
    preload: Sequence[str] = SEGMENTATION,
    workers: int = 2,
    timeout: float = 300,
    folder: Optional[str] = None,
) -> List[subprocess.CompletedProcess]:
    """Run each ``python *command`` from the repository root, one process.

    Args:
        commands (Sequence[Sequence]): Command lines after ``python``,
            e.g. ``['tools/test.py', config, checkpoint]``; items are
            turned into ``str``.
        preload (Sequence[str]): Modules imported once before forking.
            Defaults to :data:`SEGMENTATION`.
        workers (int): Command lines run at the same time. Defaults to 2.
        timeout (float): Seconds one command line may run; one that runs
            longer is killed and fails the call. Defaults to 300.
        folder (str, optional): Where the captured output is written.
            Defaults to a new temporary folder.

    Returns:
        list[subprocess.CompletedProcess]: One per command line, in order,
        with ``returncode``, ``stdout`` and ``stderr`` (text).
    """
    commands = [[str(x) for x in command] for command in commands]
    with tempfile.TemporaryDirectory() as scratch:
        folder = folder or scratch
        spec = osp.join(scratch, 'spec.json')
        with open(spec, 'w') as f:
            json.dump(
                dict(
                    preload=list(preload),
                    commands=commands,
                    workers=workers,
                    timeout=timeout,
                    folder=folder,
                ),
                f,
            )
        process = subprocess.run(
            [sys.executable, osp.abspath(__file__), spec],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout * len(commands) + 120,
        )
    lines = [x for x in process.stdout.splitlines() if x.startswith('RESULT:')]
    assert process.returncode == 0 and lines, process.stderr[-3000:]
    results = json.loads(lines[-1][len('RESULT:') :])
    timed_out = [r['argv'] for r in results if r['timed_out']]
    assert not timed_out, f'ran over {timeout} s: {timed_out}'
    return [
        subprocess.CompletedProcess(
            [sys.executable, *r['argv']],
            r['returncode'],
            r['stdout'],
            r['stderr'],
        )
        for r in results
    ]


if __name__ == '__main__':
    main(sys.argv[1])
