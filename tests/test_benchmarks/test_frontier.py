"""The frontier benchmark on a tiny run: every point measured, the
runtime planner's choices within their budgets and predicted, the
targets evaluated, the outputs written."""

import json

import torch

from benchmarks.frontier import markdown, pareto, plot, run_frontier

DEMO = (
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)


def test_frontier_smoke(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_frontier(
            DEMO,
            size=(32, 64),
            num_budgets=2,
            repeats=1,
            subsets=(('layer3',),),
            log=None,
        )
    finally:
        torch.set_num_threads(threads)
    rows = result['rows']
    assert [r['name'] for r in rows[:4]] == [
        'ResNetV1c',
        'ResNetV1c with_cp',
        'ResNetV1c with_cp + checkpointed heads',
        'ResNetV1c checkpoint layer3',
    ]
    plans = [r for r in rows if r['family'] == 'm-RevNet']
    assert len(plans) >= 2
    for row in rows:
        assert row['step_peak_mib'] > 0
        assert len(row['step_times']) == 1 and row['time_ratio'] > 0
    for plan in plans:
        assert plan['budgets'] and isinstance(
            plan['plan']['store_heads'], bool
        )
        # The prediction bounds the peak from above. At this size the
        # parameters, gradients and optimizer state are most of the peak,
        # which then comes after the kept blocks are freed: the bound is
        # loose by up to 3.4% here (3% is checked at a size where the
        # activations hold the peak: tests/test_engine/
        # test_memory_budget.py, and the committed frontier run).
        assert plan['step_peak_mib'] <= plan['predicted_peak_mib'], plan
    # Six budgets (four ResNetV1c peaks, two evenly spaced); every chosen
    # plan's measured peak within its budget.
    assert len(result['budgets']) == 6
    checks = result['checks']
    assert checks['over_budget'] == []
    # The with_cp budget is the one the runtime planner ran for.
    at_cp = checks['at_with_cp_peak']
    assert at_cp['budget_mib'] == result['planning']['budget_mib']
    chosen = next(r for r in plans if r['name'] == at_cp['plan'])
    assert chosen['plan'] == result['planning']['plan']
    assert len(checks['dominance']) == len(
        pareto([r for r in rows if r['family'] == 'ResNetV1c'])
    )
    assert checks['plan_pairs'] == len(plans) * (len(plans) - 1) // 2
    table = markdown([result])
    assert (
        '| ResNetV1c with_cp |' in table and "at with_cp's step peak" in table
    )
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


def _row(name, peak, ratio, family='m-RevNet', predicted=None, budgets=()):
    return dict(
        family=family,
        name=name,
        step_peak_mib=peak,
        time_ratio=ratio,
        step_seconds=ratio,
        predicted_peak_mib=peak if predicted is None else predicted,
        recompute_seconds=ratio,
        budgets=list(budgets),
    )


def test_targets_on_hand_made_rows():
    """Dominance without tolerance, the budgets' plans, over-budget and
    prediction error, on rows whose verdicts are known."""
    from benchmarks.frontier import check_targets

    rows = [
        _row('ResNetV1c', 100.0, 1.0, family='ResNetV1c'),
        _row('ResNetV1c with_cp', 50.0, 1.3, family='ResNetV1c'),
        # Equal peak, equal time: dominates with_cp.
        _row('A', 50.0, 1.3, budgets=['ResNetV1c point: ResNetV1c with_cp']),
        # Faster than plain but 1e-4 MiB above its peak: excluded.
        _row('B', 100.0001, 0.5),
        # Below plain's peak, slower by 1e-9: does not dominate plain;
        # its prediction is 4% low; it is 1 MiB over the 'even' budget.
        _row(
            'C',
            99.0,
            1.0 + 1e-9,
            predicted=99.0 * 0.96,
            budgets=['ResNetV1c point: ResNetV1c', 'even 1/1'],
        ),
    ]
    budgets = [
        dict(name='ResNetV1c point: ResNetV1c', budget_mib=100.0, row='C'),
        dict(
            name='ResNetV1c point: ResNetV1c with_cp',
            budget_mib=50.0,
            row='A',
        ),
        dict(name='even 1/1', budget_mib=98.0, row='C'),
    ]
    checks = check_targets(dict(rows=rows, budgets=budgets))
    verdicts = {
        d['resnet']: (d['plan'], d['met']) for d in checks['dominance']
    }
    assert verdicts == {
        'ResNetV1c with_cp': ('A', True),
        'ResNetV1c': ('C', False),
    }
    assert not checks['dominance_met']
    assert checks['at_with_cp_peak']['time_vs_resnet'] == 1.0
    assert not checks['at_with_cp_peak']['met']  # target 0.90x
    assert checks['at_plain_peak']['plan'] == 'C'
    assert checks['at_plain_peak']['met']  # 1.000000001 <= 1.01
    assert [b['name'] for b in checks['over_budget']] == ['even 1/1']
    assert abs(checks['max_prediction_error'] - 0.04) < 1e-9
    assert not checks['prediction_met']
