"""tools/analysis_tools/plan_memory.py: the runtime planner, printed."""

import json

import pytest

from tools.analysis_tools.plan_memory import main

DEMO = (
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)
ARGS = ['--shape', '2,3,32,32', '--threads', '1']


def test_plans_the_whole_segmentor_and_names_the_config_keys(tmp_path, capsys):
    out = tmp_path / 'plan.json'
    record = main([DEMO, '--memory-budget', '1GiB', *ARGS, '--json', str(out)])
    # A budget above everything: every block, the stem and the heads kept.
    assert record['stored_blocks'] == [3, 4, 6, 3]
    assert record['store_stem'] is True and record['store_heads'] is True
    assert record['budget_mib'] == 1024
    assert record['measured_peak_mib'] <= record['predicted_peak_mib']
    assert record['predicted_peak_mib'] <= record['budget_mib']
    assert json.loads(out.read_text()) == record
    printed = capsys.readouterr().out
    assert 'stored_blocks=(3, 4, 6, 3), store_stem=True' in printed
    assert 'memory_saving_heads=None' in printed


def test_a_budget_nothing_fits_exits_with_the_smallest_peak():
    with pytest.raises(SystemExit, match='no plan fits.*smallest predicted'):
        main([DEMO, '--memory-budget', '1MiB', *ARGS])
