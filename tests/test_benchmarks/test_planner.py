"""The memory planner: plans fit their budget, errors name the floor, the
plan's ``--cfg-options`` round-trips through mmengine."""

import argparse

import pytest
import torch
from mmengine.config import Config, DictAction

import mmrevnet  # noqa: F401  (registers MRevNetV1c)
from benchmarks.memory import SavedTensorCounter, step_peak
from benchmarks.planner import (
    BudgetError,
    ConfigPlanner,
    Plan,
    plan_for_budget,
)

SHAPE = (2, 3, 32, 32)
TINY = dict(
    type='MRevNetV1c',
    depth=18,
    stem_channels=8,
    base_channels=8,
    norm_cfg=dict(type='BN'),
)


@pytest.fixture(scope='module')
def planner():
    return ConfigPlanner(dict(model=dict(backbone=TINY)))


@pytest.fixture(scope='module')
def figures(planner):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return planner.measure(SHAPE, repeats=1)
    finally:
        torch.set_num_threads(threads)


def _measured(planner, plan):
    torch.manual_seed(0)
    model = planner.build(plan)
    step = planner.make_step(model, SHAPE)
    with SavedTensorCounter(exclude=model.parameters()) as counter:
        loss = step()
    del loss
    return step_peak(model, step).peak_bytes, counter.bytes


def test_figures_are_measured_for_every_count(figures):
    assert [s.num_blocks for s in figures.stages] == [2, 2, 2, 2]
    for stage in figures.stages:
        table = stage.kept_bytes_table
        assert table[0] == 0 and list(table) == sorted(table)
        assert stage.transition_seconds > 0 and stage.momentum_seconds > 0
    assert figures.last_stage_peaks[0] == figures.floor_peak_bytes
    assert len(figures.plans()) == 3**4 * 2


@pytest.mark.parametrize('fraction', [0.25, 0.6])
def test_plan_fits_budget_per_measured_step_peak(planner, figures, fraction):
    floor = figures.floor_peak_bytes
    top = figures.predict_peak(figures.all_kept())
    budget = int(floor + fraction * (top - floor))
    result = plan_for_budget(figures, budget)
    assert result.predicted_peak_bytes <= budget
    peak, saved = _measured(planner, result.plan)
    assert peak <= budget
    # Kept bytes of the stages add up exactly.
    assert saved == result.predicted_saved_bytes
    assert result.recompute_seconds < result.floor_recompute_seconds


def test_budget_below_floor_names_the_floor(figures):
    floor_mib = figures.floor_peak_bytes / 2**20
    least = min(figures.predict_peak(p) for p in figures.plans())
    assert least <= figures.floor_peak_bytes
    with pytest.raises(BudgetError, match=f'{floor_mib:.1f} MiB') as info:
        plan_for_budget(figures, least - 1)
    assert 'below the floor' in str(info.value)
    assert isinstance(info.value, ValueError)
    # The least plan itself is accepted.
    assert plan_for_budget(figures, least).predicted_peak_bytes == least


def test_budget_above_all_kept_keeps_everything(figures):
    result = plan_for_budget(figures, 2**40)
    assert result.plan == figures.all_kept() == Plan((2, 2, 2, 2), True)
    assert result.recompute_seconds == 0.0


def test_cfg_options_round_trip_through_merge_from_dict(planner):
    plan = Plan((1, 2, 0, 2), True)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(
        ['--cfg-options', *plan.cfg_options(planner.prefix).split()]
    ).cfg_options
    assert options == plan.cfg_dict()
    cfg = Config(dict(model=dict(backbone=dict(TINY))))
    cfg.merge_from_dict(options)
    assert tuple(cfg.model.backbone.stored_blocks) == (1, 2, 0, 2)
    assert cfg.model.backbone.store_stem is True
    # The merged config builds the planned backbone.
    from mmseg.registry import MODELS

    model = MODELS.build(cfg.model.backbone)
    assert model.stored_blocks == (1, 2, 0, 2) and model.store_stem


def test_plain_backbone_is_refused():
    with pytest.raises(ValueError, match='memory_saving=True'):
        ConfigPlanner(dict(TINY, memory_saving=False))


def test_cli_plans_a_config_file(tmp_path, capsys):
    from tools.analysis_tools.plan_memory import main

    config = tmp_path / 'tiny.py'
    config.write_text(f'model = dict(backbone={TINY!r})\n')
    record = main(
        [
            str(config),
            '--budget-mib',
            '1000',
            '--shape',
            '2,3,32,32',
            '--repeats',
            '1',
            '--verify',
            '--json',
            str(tmp_path / 'plan.json'),
        ]
    )
    assert record['stored_blocks'] == [2, 2, 2, 2] and record['store_stem']
    assert record['measured_peak_mib'] <= 1000
    out = capsys.readouterr().out
    assert '--cfg-options model.backbone.stored_blocks=(2,2,2,2)' in out
    with pytest.raises(SystemExit, match='below the floor'):
        main([str(config), '--budget-mib', '0.01', '--shape', '2,3,32,32'])
