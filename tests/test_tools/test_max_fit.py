"""tools/analysis_tools/max_fit.py: the fit, the variants, one small run."""

import json

import pytest

from benchmarks.variants import MREVNET_ONLY, load_config, variant_model
from tools.analysis_tools import max_fit

CONFIG = 'configs/pspnet/pspnet_mrevnet101-d8_4xb2-80k_cityscapes-512x1024.py'
DEMO = (
    'configs/demo/pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-'
    '128x256.py'
)


def test_fit_line_is_exact_on_a_line():
    assert max_fit.fit_line([(0, 5), (10, 25), (20, 45)]) == (5.0, 2.0)


def test_largest_batch_and_crops_solve_the_line():
    # 100 bytes fixed, 2 bytes per pixel, crop 8x16 (128 pixels).
    fit = max_fit.largest(100, 2.0, 100 + 2 * 128 * 10, (8, 16), batch=2)
    assert fit['batch'] == 10
    # Batch 2: 2 * 2 * side**2 <= 2560 -> side <= 25.3 -> 24 (multiple of 8).
    assert fit['square'] == 24
    # Aspect 1:2 at batch 2: scale sqrt(5) -> 17.9 x 35.8 -> 16 x 32.
    assert fit['crop'] == (16, 32)
    assert max_fit.largest(100, 2.0, 50, (8, 16), 2)['batch'] == 0


def test_variants_swap_only_the_backbone_and_the_segmentor():
    model, crop, batch, optimizer = load_config(CONFIG)
    assert (crop, batch, optimizer['type']) == ((512, 1024), 2, 'SGD')
    resnet = variant_model(model, 'ResNetV1c')
    assert resnet['type'] == 'EncoderDecoder'
    assert resnet['backbone']['type'] == 'ResNetV1c'
    assert resnet['backbone']['with_cp'] is False
    assert not set(MREVNET_ONLY) & set(resnet['backbone'])
    with_cp = variant_model(model, 'ResNetV1c with_cp')
    assert with_cp['backbone']['with_cp'] is True
    mrevnet = variant_model(model, 'm-RevNet')
    assert mrevnet['type'] == 'MRevNetEncoderDecoder'
    assert mrevnet['backbone']['type'] == 'MRevNetV1c'
    for variant in (resnet, with_cp, mrevnet):
        assert variant['backbone']['depth'] == 101
        assert variant['decode_head'] == model['decode_head']


@pytest.mark.slow
def test_small_run_orders_the_variants(tmp_path):
    max_fit.main(
        [
            DEMO,
            '--memory',
            '1GiB',
            '--base',
            '32',
            '64',
            '--threads',
            '1',
            '--out-dir',
            str(tmp_path),
        ]
    )
    record = json.loads((tmp_path / 'results.json').read_text())
    (result,) = record['results']
    rows = {row['variant']: row for row in result['rows']}
    assert list(rows) == list(max_fit.VARIANTS)
    batches = {v: r['fits']['1GiB']['batch'] for v, r in rows.items()}
    per_pixel = {v: r['per_pixel_bytes'] for v, r in rows.items()}
    assert per_pixel['m-RevNet'] < per_pixel['ResNetV1c with_cp']
    assert per_pixel['ResNetV1c with_cp'] < per_pixel['ResNetV1c']
    assert batches['m-RevNet'] > batches['ResNetV1c']
    for row in rows.values():
        assert len(row['points']) == 3
    text = (tmp_path / 'results.md').read_text()
    assert (
        '| pspnet_mrevnet34-d8_1xb8-300iter_synthetic-cityscapes-128x256 |'
        in text
    )
