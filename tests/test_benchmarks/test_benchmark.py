"""The benchmark tool's library: deterministic memory rows and outputs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.benchmark import (
    BASELINE,
    markdown_table,
    peak_comparison,
    ratios,
    run_benchmark,
)

ROOT = Path(__file__).resolve().parents[2]


#: The grid of the command-line run, measured once more in this process:
#: one (depth, head) group, the backbone inside a whole PSPNet (the
#: backbone alone: tests/test_models/test_backbones/test_mrevnet.py).
GRID = dict(depths=(50,), heads=('pspnet',), size=(64, 64))
#: Rows per (depth, head) group: one per variant.
VARIANTS = 4


@pytest.fixture(scope='module')
def tool_run(tmp_path_factory):
    """``benchmark_memory.py`` on :data:`GRID`, one timed step: each
    (depth, head) group in its own process, as the tool runs them."""
    out = tmp_path_factory.mktemp('benchmark')
    subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/analysis_tools/benchmark_memory.py'),
            '--depths',
            *map(str, GRID['depths']),
            '--heads',
            *GRID['heads'],
            '--size',
            *map(str, GRID['size']),
            '--warmup',
            '0',
            '--repeats',
            '1',
            '--out-dir',
            str(out),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
        # One thread, as in this process (the conftest): the CPU kernels,
        # and with them what a step allocates, depend on the thread count.
        env=dict(os.environ, OMP_NUM_THREADS='1'),
    )
    return out


@pytest.mark.slow
def test_memory_rows_are_deterministic_and_ordered(tool_run):
    rows = run_benchmark(**GRID, measure_time=False, log=None)
    # The same figures as the tool's subprocesses measured.
    again = json.loads((tool_run / 'benchmark.json').read_text())['rows']
    for key in ('activation_mib', 'step_peak_mib', 'step_grad_mib'):
        assert [r[key] for r in rows] == [r[key] for r in again]
    assert len(rows) == VARIANTS * len(GRID['heads'])
    for head in GRID['heads']:
        mem = {
            r['variant']: r['activation_mib']
            for r in rows
            if r['head'] == head
        }
        assert mem['MRevNetV1c'] < mem['ResNetV1c (with_cp)'] < mem[BASELINE]
        # memory_saving=False stores what a ResNet stores (within 5%).
        assert (
            abs(mem['MRevNetV1c (memory_saving=False)'] / mem[BASELINE] - 1)
            < 0.05
        )
        assert ratios(rows, head, 50)['vs ResNetV1c'] < 0.5
        peak = {
            r['variant']: r['step_peak_mib'] for r in rows if r['head'] == head
        }
        assert peak['ResNetV1c (with_cp)'] < peak[BASELINE]
        assert peak['MRevNetV1c'] < peak[BASELINE]
        assert ratios(rows, head, 50)['peak vs ResNetV1c'] < 1
        # The step holds at least what it saves for backward.
        assert all(peak[v] >= mem[v] for v in mem)
        # The same parameters, the same gradients left out.
        grads = {r['step_grad_mib'] for r in rows if r['head'] == head}
        assert len(grads) == 1 and grads.pop() > 0
    assert all(r['cuda_step_peak_mib'] is None for r in rows)
    table = markdown_table(rows)
    assert table.count('\n') == 2 + len(rows)
    assert 'MRevNetV1c' in table and 'time vs plain' not in table
    assert 'step peak (MiB)' in table and 'peak vs with_cp' in table


def test_peak_comparison_table():
    row = dict(head='backbone', depth=50, variant=BASELINE)
    rows = [
        dict(row, step_peak_mib=10.0, step_grad_mib=2.5,
             cuda_step_peak_mib=13.0),
        dict(row, step_peak_mib=10.0, step_grad_mib=2.5,
             cuda_step_peak_mib=None),
    ]  # fmt: skip
    lines = peak_comparison(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].endswith('| 10.0 | 12.5 | 13.0 |')
    assert lines[3].endswith('| 10.0 | 12.5 | - |')


@pytest.mark.slow
def test_benchmark_tool_writes_rows_with_time_ratios(tool_run):
    result = json.loads((tool_run / 'benchmark.json').read_text())
    rows = result['rows']
    assert len(rows) == VARIANTS * len(GRID['heads'])
    assert all(r['step_peak_mib'] > 0 for r in rows)
    for head in GRID['heads']:
        base = [
            r for r in rows if r['variant'] == BASELINE and r['head'] == head
        ]
        assert base[0]['time_ratio'] == 1.0
    assert all(len(r['step_times']) == 1 for r in rows)
    assert all(r['time_ratio'] > 0 for r in rows)
    table = (tool_run / 'benchmark.md').read_text()
    assert table.startswith('Device:') and 'time vs plain' in table
    assert (tool_run / 'benchmark.png').stat().st_size > 1000
