"""Acceptance 7: reconstruction drift and its mitigation.

Inverting a block divides the velocity by gamma, so rounding errors grow
like ``(1/gamma)**T``; the stage stores ``(x_t, v_t)`` every few blocks
to keep the growth below ``max_amplification`` (default 12).
``report.position_drift`` is ``max|x0_rec - x0| / max|x0|``.

F is conv-BN-ReLU-conv-BN (4 channels, 6x6, batch 2) in float32.
"""

import pytest
import torch

from mmrevnet.reversible import MomentumSequential

NO_STORED_STATES = 1e300


def _drift(rh, num, gamma, dtype=torch.float32, seed=0, **kwargs):
    stage = MomentumSequential(
        rh.conv_bn_list(num, seed=seed, dtype=dtype),
        gamma,
        track_drift=True,
        **kwargs,
    )
    rh.run(stage, rh.data(dtype=dtype, seed=seed + 1))
    return stage


def test_drift_not_measured_by_default(rh):
    stage = MomentumSequential(rh.conv_bn_list(3), 0.9)
    rh.run(stage, rh.data())
    assert stage.report.position_drift is None
    assert stage.report.velocity_drift is None


@pytest.mark.parametrize('seed', [0, 1])
def test_drift_gamma_09_35_blocks_float32(rh, seed):
    """Default plan: one stored state ((1/0.9)**35 = 40 > 12; a state
    every 23 blocks).

    Measured 5.9e-6..9.0e-6 (seeds 0-3; 3.2e-5..5.2e-5 without the stored
    state); the bound, with margin, is 4e-5 (see docs/numerics.md).
    """
    with pytest.warns(UserWarning, match='storing 1 intermediate'):
        stage = _drift(rh, 35, 0.9, seed=seed)
    assert stage.stage.num_stored_states == 1
    assert 0.0 < stage.report.position_drift < 4e-5
    assert stage.report.velocity_drift < 4e-5


def test_smaller_max_amplification_reaches_1e5(rh):
    """max_amplification=4: a state every 13 blocks (2 stored).

    Measured 1.1e-6..1.4e-6 (seeds 0-3).
    """
    with pytest.warns(UserWarning, match='storing 2 intermediate'):
        stage = _drift(rh, 35, 0.9, max_amplification=4.0)
    assert stage.stage.num_stored_states == 2
    assert stage.report.position_drift < 1e-5


def test_drift_float64(rh):
    stage = _drift(rh, 35, 0.9, dtype=torch.float64)
    assert stage.report.position_drift < 1e-12


def test_drift_grows_with_depth_without_stored_states(rh):
    """gamma = 0.5 and storing disabled: drift ~ 2**T * eps.

    Measured (seed 0): 2e-7, 4e-5, 6e-2, 5e3 for 2, 8, 17, 35 blocks.
    """
    drifts = [
        _drift(
            rh, num, 0.5, max_amplification=NO_STORED_STATES
        ).report.position_drift
        for num in (2, 8, 17, 35)
    ]
    assert drifts == sorted(drifts)
    assert drifts[1] > 10 * drifts[0]
    assert drifts[3] > 1e-2
    assert drifts[3] > 1e3 * drifts[1]


def test_stored_states_keep_drift_small(rh):
    """The mitigation: the same stage with the default plan.

    Measured 4.7e-7..9.7e-7 at 35 blocks (11 stored states), the same as
    3 blocks without any (the last segment is 3 blocks long).
    """
    with pytest.warns(UserWarning, match='intermediate state'):
        stage = _drift(rh, 35, 0.5)
    assert stage.stage.num_stored_states == 11
    assert stage.report.position_drift < 4e-6
    plain_3 = _drift(rh, 3, 0.5, max_amplification=NO_STORED_STATES)
    assert stage.report.position_drift < 10 * plain_3.report.position_drift


def test_large_drift_still_matches_plain_in_float64(rh):
    """gamma 0.5, 35 blocks, float64: storing states keeps 1e-10."""
    rev, plain = rh.make_pair(rh.conv_bn_list(35), 0.5)
    x = rh.data()
    rh.assert_runs_match(rh.run(rev, x), rh.run(plain, x), tol=1e-10)


def test_diverged_reconstruction_raises_when_tracking(rh):
    """With drift tracking, a reconstruction that overflows raises in that
    stage's backward (the check synchronises the host; by default the
    device-side record is read once per step, test_finite.py)."""
    stage = MomentumSequential(
        rh.conv_bn_list(60, dtype=torch.float32),
        0.1,
        max_amplification=NO_STORED_STATES,
        name='layer4',
        track_drift=True,
    )
    out = stage(rh.data(dtype=torch.float32))
    match = "reconstruction.*'layer4'.*diverged"
    with pytest.raises(FloatingPointError, match=match):
        out.sum().backward()
