"""The kept-overhead benchmark on a tiny input."""

import pytest

from benchmarks.kept_overhead import POINTS, build_point, markdown, run
from benchmarks.variants import load_config

CONFIG = 'configs/pspnet/pspnet_mrevnet50-d8_4xb2-80k_cityscapes-512x1024.py'


def test_points_keep_everything_and_differ_only_in_the_heads():
    model_cfg, _, _, optimizer_cfg = load_config(CONFIG)
    resnet, _ = build_point(model_cfg, optimizer_cfg, POINTS[0])
    assert type(resnet.backbone).__name__ == 'ResNetV1c'
    for point, concat_free in ((POINTS[1], False), (POINTS[2], True)):
        model, _ = build_point(model_cfg, optimizer_cfg, point)
        backbone = model.backbone
        assert backbone.stored_blocks == tuple(backbone.stage_blocks)
        assert backbone.store_stem
        assert model.memory_saving_heads is None
        assert model.concat_free is concat_free
    with pytest.raises(ValueError, match='point must be one of'):
        build_point(model_cfg, optimizer_cfg, 'm-RevNet')


def test_run_times_and_splits_every_point():
    result = run(CONFIG, (32, 64), batch_size=2, rounds=1)
    rows = result['rows']
    assert [row['point'] for row in rows] == list(POINTS)
    assert rows[0]['time_ratio'] == 1.0
    for row in rows:
        assert len(row['step_seconds']) == 1
        assert row['elementwise_seconds'] > 0
        assert row['other_seconds'] > 0
        assert row['profiled_seconds'] == pytest.approx(
            row['elementwise_seconds'] + row['other_seconds']
        )
    # The momentum update is profiled (lerp) only where m-RevNet runs.
    assert 'aten::lerp' not in rows[0]['elementwise_by_operator']
    assert rows[1]['elementwise_by_operator']['aten::lerp'] > 0
    text = markdown(result)
    for point in POINTS:
        assert point in text
