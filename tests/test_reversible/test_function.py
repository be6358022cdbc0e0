"""MomentumStageFunction: autograd integration and path selection."""

import pytest
import torch
from torch import nn

from mmrevnet.reversible import MomentumSequential, MomentumStageFunction


def _grad_fn_name(out):
    return type(out.grad_fn).__name__ if out.grad_fn is not None else ''


@pytest.fixture
def apply_calls(monkeypatch):
    """Counts calls of ``MomentumStageFunction.apply``."""
    calls = []
    original = MomentumStageFunction.apply

    def spy(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(MomentumStageFunction, 'apply', spy)
    return calls


def test_training_with_grad_takes_the_function(rh, apply_calls):
    rev, _ = rh.make_pair(rh.conv_bn_list(3), 0.9)
    out = rev(rh.data())
    assert len(apply_calls) == 1
    assert 'MomentumStageFunction' in _grad_fn_name(out)


@pytest.mark.parametrize('mode', ['eval', 'no_grad', 'nothing_to_train'])
def test_plain_path_without_anything_to_save(rh, apply_calls, mode):
    rev, plain = rh.make_pair(rh.conv_bn_list(3), 0.9)
    x = rh.data(grad=mode != 'nothing_to_train')
    if mode == 'eval':
        rev.eval()
        plain.eval()
        out = rev(x)
        assert 'MomentumStageFunction' not in _grad_fn_name(out)
        assert out.grad_fn is not None  # the plain graph is recorded
    elif mode == 'no_grad':
        with torch.no_grad():
            out = rev(x)
            ref = plain(x)
        assert out.grad_fn is None
    else:
        rev.requires_grad_(False)
        plain.requires_grad_(False)
        out = rev(x)
        assert out.grad_fn is None
    assert apply_calls == []
    if mode != 'no_grad':
        ref = plain(x)
    assert torch.equal(out, ref)


def test_autograd_grad(rh):
    """torch.autograd.grad, not only .backward()."""
    rev, plain = rh.make_pair(rh.conv_bn_list(6), 0.9)
    results = []
    for module in (rev, plain):
        x = rh.data()
        params = list(module.parameters())
        loss = (module(x) ** 2).sum()
        results.append(torch.autograd.grad(loss, [x] + params))
        assert all(p.grad is None for p in params)
    for a, b in zip(*results):
        assert rh.max_rel(a, b) <= 1e-10


def test_autograd_grad_of_input_only(rh):
    rev, plain = rh.make_pair(rh.conv_bn_list(4), 0.9)
    grads = []
    for module in (rev, plain):
        x = rh.data()
        (grad,) = torch.autograd.grad(module(x).sum(), [x])
        grads.append(grad)
    assert rh.max_rel(*grads) <= 1e-10


def test_input_without_grad_still_trains_params(rh, apply_calls):
    """Trap 2: a frozen stem must not silence the stage's params."""
    rev, plain = rh.make_pair(rh.conv_bn_list(5), 0.9)
    x = rh.data(grad=False)
    rev_run = rh.run(rev, x)
    assert len(apply_calls) == 1
    assert rev_run[1] is None
    assert all(g is not None for g in rev_run[3].values())
    rh.assert_runs_match(rev_run, rh.run(plain, x), tol=1e-10)


def test_partially_frozen_parameters(rh):
    rev, plain = rh.make_pair(rh.conv_bn_list(6), 0.9)
    for module in (rev, plain):
        for i, function in enumerate(module.functions):
            function[0].weight.requires_grad_(False)  # every first conv
            if i % 2:
                function[4].requires_grad_(False)  # some BN affines
    x = rh.data()
    rev_run = rh.run(rev, x)
    frozen = {
        name for name, p in rev.named_parameters() if not p.requires_grad
    }
    assert len(frozen) == 6 + 3 * 2
    for name, grad in rev_run[3].items():
        assert (grad is None) == (name in frozen), name
    rh.assert_runs_match(rev_run, rh.run(plain, x), tol=1e-10)


def test_shared_module_with_frozen_input(rh):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 6)).double()
    rev, plain = rh.make_pair([f] * 15, 0.9)
    x = rh.data((20, 6), grad=False)
    rh.assert_runs_match(rh.run(rev, x), rh.run(plain, x), tol=1e-10)


def test_double_backward_raises(rh):
    rev, _ = rh.make_pair(rh.conv_bn_list(3), 0.9, name='layer2')
    x = rh.data()
    loss = rev(x).pow(2).sum()
    with pytest.raises(RuntimeError, match='double backward') as info:
        torch.autograd.grad(loss, [x], create_graph=True)
    assert 'layer2' in str(info.value)
    assert 'memory_saving=False' in str(info.value)


def test_double_backward_works_on_plain_path(rh):
    _, plain = rh.make_pair(rh.conv_bn_list(3), 0.9)
    x = rh.data()
    (grad,) = torch.autograd.grad(
        plain(x).pow(2).sum(), [x], create_graph=True
    )
    grad.sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize('bad', [float('inf'), float('nan')])
def test_non_finite_input_raises_in_forward_when_tracking(rh, bad):
    """With drift tracking (it synchronises the host) the check raises at
    once, in the forward of the stage that met the value."""
    rev, _ = rh.make_pair(
        rh.conv_bn_list(3), 0.9, name='layer3', track_drift=True
    )
    x = rh.data().detach()
    x[0, 0, 0, 0] = bad
    x.requires_grad_()
    with pytest.raises(FloatingPointError, match="'layer3'.*stage input"):
        rev(x)


def test_too_small_gamma_raises_at_construction():
    with pytest.raises(ValueError, match='gamma'):
        MomentumSequential([nn.Identity()] * 35, gamma=0.05)


def test_stage_output_modified_in_place_is_detected(rh):
    """x_T is saved for backward: in-place edits must not go unnoticed."""
    rev, _ = rh.make_pair(rh.conv_bn_list(3), 0.9)
    out = rev(rh.data())
    out.add_(1.0)
    with pytest.raises(RuntimeError, match='inplace'):
        out.sum().backward()
