"""The benchmark tool's library: deterministic memory rows and outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.benchmark import (
    BASELINE,
    markdown_table,
    peak_comparison,
    plot,
    ratios,
    run_benchmark,
)

ROOT = Path(__file__).resolve().parents[2]


def test_memory_rows_are_deterministic_and_ordered():
    kwargs = dict(
        depths=(50,),
        heads=('backbone', 'pspnet'),
        size=(64, 64),
        measure_time=False,
        log=None,
    )
    rows = run_benchmark(**kwargs)
    again = run_benchmark(**kwargs)
    for key in ('activation_mib', 'step_peak_mib', 'step_grad_mib'):
        assert [r[key] for r in rows] == [r[key] for r in again]
    assert len(rows) == 8
    for head in ('backbone', 'pspnet'):
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


def test_timing_rows_have_ratios(tmp_path):
    rows = run_benchmark(
        depths=(50,),
        heads=('backbone',),
        size=(32, 32),
        warmup=0,
        repeats=2,
        log=None,
    )
    base = [r for r in rows if r['variant'] == BASELINE][0]
    assert base['time_ratio'] == 1.0
    assert all(len(r['step_times']) == 2 for r in rows)
    assert all(r['time_ratio'] > 0 for r in rows)
    out = plot(rows, str(tmp_path / 'plot.png'))
    assert Path(out).stat().st_size > 1000
    assert 'time vs plain' in markdown_table(rows)


@pytest.mark.slow
def test_benchmark_tool_quick(tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(ROOT / 'tools/analysis_tools/benchmark_memory.py'),
            '--quick',
            '--out-dir',
            str(tmp_path),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    result = json.loads((tmp_path / 'benchmark.json').read_text())
    assert len(result['rows']) == 8
    assert all(r['step_peak_mib'] > 0 for r in result['rows'])
    assert (tmp_path / 'benchmark.md').read_text().startswith('Device:')
    assert (tmp_path / 'benchmark.png').stat().st_size > 1000
