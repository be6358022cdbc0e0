"""The precision table's claim at a small size: memory-saving gradients
are no further from float64 than the plain path's own, on every tensor."""

import math

import pytest

from benchmarks.precision import (
    error_ratio,
    ratio_summary,
    summary_table,
    tensor_error,
    tensor_errors,
    tensor_table,
)


def test_error_measure_is_norm_wise_relative():
    import torch

    reference = torch.tensor([3.0, 4.0])
    assert tensor_error(torch.tensor([3.0, 4.5]), reference) == 0.1
    assert tensor_error(torch.tensor([1.0, 0.0]), torch.zeros(2)) == 1.0
    assert error_ratio(2e-6, 1e-6) == 2.0
    assert error_ratio(0.0, 0.0) == 1.0
    assert error_ratio(1e-9, 0.0) == math.inf


@pytest.mark.parametrize('gamma', [0.5, 0.9, 0.999999])
def test_memory_saving_error_at_most_twice_plain_on_every_tensor(gamma):
    # Narrow (width 16) MRevNetV1c-50 at 64x64: the smallest input whose
    # last stage is not 1x1 (batch statistics of two values leave the
    # gradients above it pure rounding noise in every precision).
    result = tensor_errors(
        50, gamma, precisions=('fp32', 'bf16'), base_channels=16
    )
    for precision in ('fp32', 'bf16'):
        summary = ratio_summary(result, precision)
        assert summary['tensors'] == len(result['names']) == 165
        assert summary['max_ratio'] <= 2.0, (precision, summary)
    # The plain path's own rounding, for scale: bf16 far above fp32 (whose
    # largest, 1.1e-2 at gamma 0.999999, is fp32's rounding of gamma: it
    # moves 1 - gamma by 1.3%).
    fp32 = ratio_summary(result, 'fp32')['max_plain_error']
    assert fp32 < 0.02
    assert ratio_summary(result, 'bf16')['max_plain_error'] > 10 * fp32
    assert '| 50 |' in summary_table([result])
    assert f'g={gamma:g} fp32' in tensor_table([result])
