"""The fast reversed backward equals the reference one, in float64.

:mod:`mmrevnet.reversible.reference` is the stage's backward written as
its equations (out of place); :class:`MomentumStageFunction` reuses
buffers and updates in place. Both run from the same weights and inputs;
every input, velocity and parameter gradient must agree within 1e-12 of
its largest element, on every block type the backbones use.
"""

import copy
import warnings

import pytest
import torch

from mmrevnet.reversible import MomentumSequential
from mmrevnet.reversible.reference import (
    reference_backward,
    reference_forward,
)

# max|fast - reference| / max|reference|: float64 rounding only.
RTOL = 1e-12


def _close(got, expected, name):
    scale = expected.abs().max().clamp_min(1e-300)
    error = ((got - expected).abs().max() / scale).item()
    assert error <= RTOL, (name, error)


def _conv_bn(rh, num):
    return rh.conv_bn_list(num)


def _basic(rh, num):
    from mmrevnet.models.utils.res_layer import MomentumBasicBlock

    torch.manual_seed(1)
    return [
        MomentumBasicBlock(inplanes=4, planes=4).double() for _ in range(num)
    ]


def _bottleneck(rh, num, chunk=False):
    from mmrevnet.models.utils.res_layer import MomentumBottleneck

    torch.manual_seed(2)
    blocks = [
        MomentumBottleneck(inplanes=16, planes=4).double() for _ in range(num)
    ]
    for block in blocks:
        block.recomputed = chunk
    return blocks


def _residual_block(rh, num):
    from mmrevnet.models.utils.res_layer import MomentumBottleneck

    torch.manual_seed(3)
    return [
        MomentumBottleneck(inplanes=16, planes=4, residual_fn='block').double()
        for _ in range(num)
    ]


CASES = {
    # name: (functions, blocks, gamma, channels, initial velocity)
    'conv-bn': (_conv_bn, 4, 0.9, 4, False),
    'conv-bn, v0': (_conv_bn, 4, 0.9, 4, True),
    'conv-bn, stored states': (_conv_bn, 6, 0.5, 4, False),
    'basic block': (_basic, 3, 0.9, 4, False),
    'bottleneck': (_bottleneck, 3, 0.9, 16, True),
    'bottleneck, conv3 by chunks': (
        lambda rh, n: _bottleneck(rh, n, chunk=True),
        3,
        0.9,
        16,
        False,
    ),
    "bottleneck, residual_fn='block'": (_residual_block, 3, 0.8, 16, False),
}


@pytest.mark.parametrize('case', list(CASES))
def test_fast_backward_equals_reference(rh, monkeypatch, case):
    from mmrevnet.models.utils import res_layer

    # Chunks of 4 of the 16 output channels (4 chunks: chunkable).
    monkeypatch.setattr(res_layer, 'CHANNEL_CHUNK', 4)
    make, num, gamma, channels, with_v0 = CASES[case]
    functions = make(rh, num)
    reference = copy.deepcopy(functions)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # stored states
        stage = MomentumSequential(functions, gamma=gamma).train()
    for f in reference:
        f.train()
    torch.manual_seed(5)
    x0 = torch.randn(2, channels, 6, 6, dtype=torch.float64)
    v0 = torch.randn_like(x0) if with_v0 else None
    weight = torch.randn_like(x0)

    x = x0.clone().requires_grad_(True)
    v = v0.clone().requires_grad_(True) if with_v0 else None
    out = stage(x, v)
    assert 'MomentumStageFunction' in type(out.grad_fn).__name__
    (out * weight).sum().backward()

    x_end, v_end = reference_forward(reference, gamma, x0, v0)
    _close(out.detach(), x_end, 'x_T')
    grad_x, grad_v, param_grads = reference_backward(
        reference, gamma, x_end, v_end, weight
    )
    _close(x.grad, grad_x, 'dL/dx_0')
    if with_v0:
        _close(v.grad, grad_v, 'dL/dv_0')
    compared = 0
    for t, (fast, ref) in enumerate(zip(functions, param_grads)):
        for (name, p), expected in zip(fast.named_parameters(), ref):
            assert (p.grad is None) == (expected is None), (t, name)
            if expected is not None:
                _close(p.grad, expected, f'{t}.{name}')
                compared += 1
    assert compared >= num * 2


def test_reference_would_see_a_wrong_gradient(rh):
    """The comparison can fail: the reference with another gamma gives
    other gradients."""
    functions = rh.conv_bn_list(3)
    x0 = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    weight = torch.randn_like(x0)
    x_end, v_end = reference_forward(functions, 0.9, x0)
    right = reference_backward(functions, 0.9, x_end, v_end, weight)[0]
    x_end, v_end = reference_forward(functions, 0.8, x0)
    wrong = reference_backward(functions, 0.8, x_end, v_end, weight)[0]
    with pytest.raises(AssertionError):
        _close(wrong, right, 'dL/dx_0')
