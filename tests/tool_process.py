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

Each process of the tests starts one such process per set of modules to
import first (``python tests/tool_process.py --serve MODULES``) and keeps
it for all its calls, so the imports are paid once per test process; the
children get the caller's environment. For each spec file named on its
stdin (command lines, workers, timeout, output folder) it prints one
``RESULT:`` line of JSON.
"""

import atexit
import importlib
import itertools
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


def _preload(modules: Sequence[str]) -> None:
    # The tools' own modules import from the repository root; the scripts
    # put it on sys.path themselves, so it is taken off again.
    sys.path.insert(0, REPO)
    for module in modules:
        importlib.import_module(module)
    sys.path.remove(REPO)
    sys.stdout.flush()
    sys.stderr.flush()


def _run_spec(spec: dict) -> list:
    """Fork one child per command line of ``spec``; their results."""
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
                os.environ.clear()
                os.environ.update(spec['environment'])
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
    return results


def serve(preload: str) -> None:
    """Import ``preload`` (comma-separated) once, then, for each line
    ``ID SPEC_FILE`` of stdin, run the spec and answer ``RESULT:ID:JSON``
    (the ID lets the caller skip an answer it stopped waiting for)."""
    _preload(preload.split(','))
    for line in sys.stdin:
        request, path = line.split(' ', 1)
        with open(path.strip()) as f:
            spec = json.load(f)
        results = json.dumps(_run_spec(spec))
        print(f'RESULT:{request}:{results}', flush=True)


#: Servers of this process, by preload: started at the first call of
#: :func:`run_tools` and ended when the tests' process exits. A server's
#: own environment is the one of that first call; only its imports see it,
#: each child gets the environment of its caller.
_SERVERS: dict = {}
_REQUESTS = itertools.count()


def _server(preload: Sequence[str]) -> subprocess.Popen:
    key = ','.join(preload)
    server = _SERVERS.get(key)
    if server is None or server.poll() is not None:
        log = tempfile.NamedTemporaryFile(
            prefix='tool_server_', suffix='.log', delete=False
        )
        server = subprocess.Popen(
            [sys.executable, osp.abspath(__file__), '--serve', key],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        server.log_path = log.name
        _SERVERS[key] = server
        atexit.register(_stop, server)
    return server


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        try:
            server.stdin.close()
            server.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            server.kill()
            server.wait()
    if osp.exists(server.log_path):
        os.remove(server.log_path)


def _ask(server: subprocess.Popen, spec: str) -> Optional[list]:
    """Send a spec to ``server``; its results, or None when it died."""
    request = next(_REQUESTS)
    server.stdin.write(f'{request} {spec}\n')
    server.stdin.flush()
    answer = f'RESULT:{request}:'
    for line in server.stdout:
        if line.startswith(answer):
            return json.loads(line[len(answer) :])
    return None


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
                    commands=commands,
                    workers=workers,
                    timeout=timeout,
                    folder=folder,
                    environment=dict(os.environ),
                ),
                f,
            )
        server = _server(preload)
        results = _ask(server, spec)
    if results is None:
        _SERVERS.pop(','.join(preload), None)
        with open(server.log_path, errors='replace') as f:
            log = f.read()[-3000:]
        _stop(server)
        raise AssertionError(f'the tool server stopped:\n{log}')
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
    serve(sys.argv[2])
