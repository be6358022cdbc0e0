"""Non-finite detection of the memory-saving path (on by default).

Every injection below must be found, in the pass and at the stage and
function where it first appeared, without a host synchronisation during
the step; :func:`check_finite` reads the device-side records once.
"""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mmrevnet.reversible import MomentumSequential, check_finite

SYNC_OPS = ('aten::_local_scalar_dense', 'aten::item', 'aten::is_nonzero')
NO_STORED_STATES = 1e300


class _SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNC_OPS:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


class _Model(nn.Module):
    """Two stages in a row, like two res layers of a backbone."""

    def __init__(self, rh, num=(3, 4), **kwargs):
        super().__init__()
        self.first = MomentumSequential(
            rh.conv_bn_list(num[0], dtype=torch.float32), 0.9, **kwargs
        )
        self.second = MomentumSequential(
            rh.conv_bn_list(num[1], seed=1, dtype=torch.float32),
            0.9,
            **kwargs,
        )

    def forward(self, x):
        return self.second(self.first(x))


def _step(model, x):
    model.train()
    out = model(x)
    out.pow(2).mean().backward()
    return out


def _data(rh):
    return rh.data(dtype=torch.float32)


def test_finite_step_makes_no_host_sync_and_passes(rh):
    model = _Model(rh)
    x = _data(rh)
    with _SyncCounter() as counter:
        _step(model, x)
    assert counter.syncs == 0
    # Recorded (on by default), all finite.
    flags = model.first.stage.finite.flags
    assert flags is not None and flags.shape == (2, 4)
    assert not flags.any()
    check_finite(model, iteration=1)


@pytest.mark.parametrize('value', [float('nan'), float('inf')])
def test_non_finite_input_names_the_first_stage_input(rh, value):
    model = _Model(rh)
    x = _data(rh).detach()
    x[0, 0, 0, 0] = value
    _step(model, x.requires_grad_())
    with pytest.raises(FloatingPointError) as info:
        check_finite(model, iteration=7)
    text = str(info.value)
    assert 'forward pass at iteration 7' in text
    assert "stage 'first', at the stage input" in text
    # Read once, then cleared: the next finite step passes.
    _step(model, _data(rh))
    check_finite(model)


@pytest.mark.parametrize(
    'stage, function', [('first', 0), ('first', 2), ('second', 1)]
)
def test_nan_weight_names_its_stage_and_block(rh, stage, function):
    model = _Model(rh)
    module = getattr(model, stage).functions[function]
    with torch.no_grad():
        module[0].weight[0, 0, 0, 0] = float('nan')
    _step(model, _data(rh))
    with pytest.raises(FloatingPointError) as info:
        check_finite(model, iteration=3)
    text = str(info.value)
    assert 'forward pass' in text
    assert (
        f'stage {stage!r}, at the output of block '
        f"'{stage}.functions.{function}', function {function} "
    ) in text


def test_track_drift_raises_in_forward_at_the_right_stage(rh):
    """The drift monitor raises at once: in the forward of the stage that
    met the NaN, not in the backward of the last stage."""
    model = _Model(rh, track_drift=True)
    with torch.no_grad():
        model.first.functions[1][0].weight[0, 0, 0, 0] = float('nan')
    model.train()
    with pytest.raises(FloatingPointError, match="'stage'.*function 1 "):
        model(_data(rh))


def test_diverged_reconstruction_is_named(rh):
    """A finite forward whose reconstruction overflows (gamma 0.1 without
    stored states): reported as the reconstruction, at the stage and the
    deepest function where the backward first met it."""
    stage = MomentumSequential(
        rh.conv_bn_list(60, dtype=torch.float32),
        0.1,
        max_amplification=NO_STORED_STATES,
        name='layer4',
    )
    model = nn.ModuleDict(dict(layer4=stage))
    stage.train()
    out = stage(_data(rh))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert not stage.stage.finite.flags[0].any()
    with pytest.raises(FloatingPointError) as info:
        check_finite(model, iteration=1)
    text = str(info.value)
    assert 'reconstruction of the memory-saving backward' in text
    assert "stage 'layer4', at the rebuilt input of block" in text
    assert 'diverged' in text


def test_stored_blocks_are_checked_too(rh):
    """Functions kept under plain autograd (a memory plan) are recorded."""
    model = _Model(rh, stored_blocks=2)
    with torch.no_grad():
        model.first.functions[1][0].weight[0, 0, 0, 0] = float('inf')
    _step(model, _data(rh))
    with pytest.raises(FloatingPointError, match="'first.functions.1'"):
        check_finite(model)


def test_infinite_gradients_alone_are_not_an_error(rh):
    """An overflowing loss scale gives infinite gradients from finite
    activations: a loss scaler's business (it skips the step), not ours."""
    model = _Model(rh)
    model.train()
    out = model(_data(rh))
    (out.sum() * 1e38 * 1e38).backward()
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    check_finite(model)


def test_check_finite_can_be_switched_off(rh):
    model = _Model(rh, check_finite=False)
    x = _data(rh).detach()
    x[0, 0, 0, 0] = float('nan')
    _step(model, x.requires_grad_())
    assert model.first.stage.finite.flags is None
    check_finite(model)
    with pytest.raises(TypeError, match='check_finite'):
        model.first.configure(check_finite='yes')


def test_stages_given_by_name(rh):
    model = _Model(rh)
    with torch.no_grad():
        model.second.functions[3][0].weight[0, 0, 0, 0] = float('nan')
    _step(model, _data(rh))
    stages = {'a': model.first.stage, 'b': model.second.stage}
    with pytest.raises(FloatingPointError, match="'b'.*function 3 "):
        check_finite(stages)
