"""benchmarks.drift: the drift-table study."""

import pytest
import torch

from benchmarks.drift import format_table, measure_drift


def _small(**kwargs):
    return measure_drift(channels=4, size=4, batch=2, **kwargs)


def test_rows_and_values():
    rows = _small(gammas=[0.9, 0.5], lengths=[2, 9], dtype=torch.float64)
    assert [(r['gamma'], r['length']) for r in rows] == [
        (0.9, 2),
        (0.9, 9),
        (0.5, 2),
        (0.5, 9),
    ]
    for row in rows:
        assert row['error'] is None
        assert row['dtype'] == 'float64'
        assert row['position_drift'] < 1e-12
        assert row['grad_norm_error'] < 1e-12
        assert row['param_grad_error'] < 1e-10
        assert row['plain_param_grad_error'] is None
    # (1/0.5)**9 = 512 > 12: a state every 3 blocks, two stored.
    assert rows[3]['stored_states'] == 2
    assert rows[3]['amplification'] == pytest.approx(2.0**9)


def test_storing_disabled_and_float32_floor():
    (row,) = _small(
        gammas=[0.5], lengths=[9], dtype=torch.float32, max_amplification=1e300
    )
    assert row['stored_states'] == 0
    assert row['position_drift'] > 1e-6
    assert row['plain_param_grad_error'] < 1e-4


def test_refused_setting_is_a_row():
    (row,) = _small(gammas=[0.05], lengths=[35], compare_grad=False)
    assert row['error'].startswith('refused')
    assert row['position_drift'] is None


def test_format_table():
    rows = _small(gammas=[0.9], lengths=[2], compare_grad=False)
    table = format_table(rows).splitlines()
    assert len(table) == 3
    assert table[2].startswith('| float32 | 0.9 | 2 |')
    assert table[0].count('|') == table[2].count('|')
