"""Load crafted checkpoints in this process, measuring each; print results.

Run by ``test_checkpoint.py::test_hostile_files_are_cheap`` in a child
process (``python -m test_engine.load_hostile SPEC.json``, ``tests/`` on
the path). The process caps its own address space (``RLIMIT_AS``) once
the imports are done, so a file that still found a way to multiply memory
ends in a ``MemoryError`` here, not in the machine running out of memory.
Each case's peak resident memory is read as Linux's high-water mark
(``VmHWM``) after resetting it to the current size (``/proc/self/
clear_refs``), and each case runs under a ``SIGALRM`` time limit.
"""

import json
import os
import resource
import signal
import sys
import time
import uuid


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field, in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


class _TimeLimit(Exception):
    pass


def _alarm(signum, frame):
    raise _TimeLimit


def main(spec_file: str) -> None:
    with open(spec_file) as f:
        spec = json.load(f)
    from mmrevnet.engine import load_runner_checkpoint
    from test_engine.test_checkpoint import _runner

    runner = _runner(
        os.path.join(spec['work_dir'], uuid.uuid4().hex), 1, resume=False
    )
    loaders = {
        'load_runner_checkpoint': load_runner_checkpoint,
        'MRevNetRunner.resume': runner.resume,
    }
    limit = _status('VmSize') + spec['address_space_headroom']
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _alarm)
    for name, path in spec['cases']:
        for loader, load in loaders.items():
            _reset_peak()
            baseline = _status('VmRSS')
            start = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, spec['time_limit'])
            try:
                load(path)
                error, message = None, ''
            except _TimeLimit:
                error, message = 'time limit', ''
            except BaseException as caught:  # noqa: BLE001 (reported)
                error, message = type(caught).__name__, str(caught)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            seconds = time.perf_counter() - start
            peak = _status('VmHWM') - baseline
            result = dict(
                name=name,
                loader=loader,
                error=error,
                message=message,
                peak_rss_mib=peak / 2**20,
                seconds=seconds,
            )
            print('RESULT:' + json.dumps(result), flush=True)


if __name__ == '__main__':
    main(sys.argv[1])
