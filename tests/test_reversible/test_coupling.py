"""The coupling math of :mod:`mmrevnet.reversible.coupling`."""

import math

import pytest
import torch

from mmrevnet.reversible import (
    amplification,
    forward_step,
    gamma_as_computed,
    inverse_position,
    inverse_velocity,
    state_anchor_interval,
)


@pytest.mark.parametrize('gamma', [0.3, 0.9, 0.99])
def test_forward_step_is_the_momentum_update(gamma):
    gen = torch.Generator().manual_seed(0)
    x, v, fx = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    x_next, v_next = forward_step(x, v, fx, gamma)
    v_ref = gamma * v + (1 - gamma) * fx
    # Fused (lerp) vs three-operation rounding: a few ulps apart at most.
    scale = 4e-16 * (v.abs().max() + fx.abs().max())
    assert (v_next - v_ref).abs().max() <= scale
    assert torch.equal(x_next, x + v_next)


@pytest.mark.parametrize('gamma', [0.3, 0.9, 0.99])
def test_inverse_undoes_one_step(gamma):
    gen = torch.Generator().manual_seed(1)
    x, v, fx = torch.randn(3, 100, generator=gen, dtype=torch.float64)
    x_next, v_next = forward_step(x, v, fx, gamma)
    x_rec = inverse_position(x_next, v_next)
    v_rec = inverse_velocity(v_next, fx, gamma)
    # Ulp-level only: fl(fl(a + b) - b) != a in general.
    assert (x_rec - x).abs().max() <= 4e-16 * (x.abs().max() + 1)
    assert (v_rec - v).abs().max() <= 4e-16 / gamma * (v.abs().max() + 1)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_gamma_as_computed_is_fp32_for_16_bit(dtype):
    """16-bit lerp runs in fp32 (opmath): gamma rounded to 16 bits would
    make the backward of a pure 16-bit stage off by percents."""
    expected = float(torch.tensor(0.99, dtype=torch.float32))
    assert gamma_as_computed(0.99, dtype) == expected
    assert gamma_as_computed(0.99, torch.float64) == 0.99


def test_low_precision_f_is_coupled_in_fp32():
    x = torch.randn(4)
    v = torch.randn(4)
    fx = torch.randn(4).bfloat16()
    x_next, v_next = forward_step(x, v, fx, 0.9)
    assert x_next.dtype == v_next.dtype == torch.float32
    assert inverse_velocity(v_next, fx, 0.9).dtype == torch.float32


def test_amplification():
    assert amplification(0.5, 0) == 1.0
    assert amplification(0.5, 10) == pytest.approx(1024.0, rel=1e-12)
    assert amplification(0.9, 35) == pytest.approx(0.9**-35, rel=1e-12)


@pytest.mark.parametrize(
    'gamma,max_amp,expected',
    [
        (0.5, 2.0**8, 8),
        (0.9, 2.0**8, 52),
        (0.5, 2.0**8 - 1, 7),
        (0.1, 2.0, 1),  # fewer than one block fits: still one block
    ],
)
def test_state_anchor_interval(gamma, max_amp, expected):
    interval = state_anchor_interval(gamma, max_amp)
    assert interval == expected
    if expected > 1:
        assert amplification(gamma, interval) <= max_amp * (1 + 1e-12)
        assert amplification(gamma, interval + 1) > max_amp


@pytest.mark.parametrize(
    'gamma,max_amp',
    [(0.0, 256.0), (1.0, 256.0), (-0.1, 256.0), (0.5, 1.0), (0.5, 0.5)],
)
def test_state_anchor_interval_rejects(gamma, max_amp):
    with pytest.raises(ValueError):
        state_anchor_interval(gamma, max_amp)


def test_amplification_is_finite_for_long_stages():
    assert math.isfinite(amplification(0.5, 1000))
