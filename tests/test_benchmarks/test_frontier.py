"""The frontier benchmark on a tiny run: every point measured, the
planner's predictions checked, the outputs written."""

import json

from benchmarks.frontier import markdown, pareto, plot, run_frontier


def test_frontier_smoke(tmp_path):
    result = run_frontier(
        depth=18,
        head='backbone',
        size=(32, 32),
        num_budgets=3,
        repeats=1,
        warmup=0,
        block_repeats=1,
        subsets=(('layer3',),),
        log=None,
    )
    rows = result['rows']
    names = [r['name'] for r in rows]
    assert names[:3] == [
        'ResNetV1c',
        'ResNetV1c with_cp',
        'ResNetV1c checkpoint layer3',
    ]
    plans = [r for r in rows if r['family'] == 'MRevNetV1c']
    assert len(plans) >= 2
    for row in rows:
        assert row['step_peak_mib'] > 0 and row['activation_mib'] > 0
        assert len(row['step_times']) == 1 and row['time_ratio'] > 0
    for plan in plans:
        assert plan['predicted_peak_mib'] <= plan['budget_mib'] + 1e-9
        assert 'model.backbone.stored_blocks=' not in plan['cfg_options']
        assert plan['cfg_options'].startswith('stored_blocks=(')
        # Saved bytes add up exactly; the peak is predicted within 5%.
        assert abs(plan['activation_mib'] - plan['predicted_saved_mib']) < 1e-9
        assert (
            abs(plan['step_peak_mib'] / plan['predicted_peak_mib'] - 1) < 0.05
        )
    checks = result['checks']
    assert checks['at_with_cp_peak'] is not None
    assert len(checks['dominance']) == len(
        pareto([r for r in rows if r['family'] == 'ResNetV1c'])
    )
    assert checks['plan_pairs'] == len(plans) * (len(plans) - 1) // 2
    table = markdown([result])
    assert '| ResNetV1c with_cp |' in table and 'Dominance' in table
    assert plot([result], str(tmp_path / 'f.png')) == str(tmp_path / 'f.png')
    assert (tmp_path / 'f.png').stat().st_size > 0
    json.dumps(result)


def test_pareto_keeps_only_undominated_points():
    points = [
        dict(step_peak_mib=1, time_ratio=2),
        dict(step_peak_mib=2, time_ratio=3),
        dict(step_peak_mib=3, time_ratio=1),
    ]
    assert pareto(points) == [points[0], points[2]]
