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


# The stage output x_T and autograd's grad_output become working memory of
# the backward only when nothing but autograd refers to them.


def _weighted_loss(rh, out):
    return (out * rh.data(out.shape, seed=123, grad=False)).sum()


def _grads(module, x):
    return [x.grad] + [p.grad for p in module.parameters()]


def _assert_grads_equal(rh, rev, plain, x_rev, x_plain, tol=1e-12):
    for a, b in zip(_grads(rev, x_rev), _grads(plain, x_plain)):
        assert rh.max_rel(a, b) <= tol


def test_backward_with_the_output_dropped_is_exact(rh):
    """Only autograd holds x_T and grad_output: both are reused."""
    rev, plain = rh.make_pair(rh.conv_bn_list(4), 0.9)
    x_rev, x_plain = rh.data(), rh.data()
    _weighted_loss(rh, rev(x_rev)).backward()
    _weighted_loss(rh, plain(x_plain)).backward()
    _assert_grads_equal(rh, rev, plain, x_rev, x_plain)


@pytest.mark.parametrize('alias', ['output', 'detached', 'view'])
def test_output_the_caller_holds_is_left_unchanged(rh, alias):
    rev, plain = rh.make_pair(rh.conv_bn_list(4), 0.9)
    x_rev, x_plain = rh.data(), rh.data()
    out = rev(x_rev)
    held = {'output': out, 'detached': out.detach(), 'view': out[:, :2]}
    held = held[alias]
    expected = held.detach().clone()
    loss = _weighted_loss(rh, out)
    del out
    loss.backward()
    assert torch.equal(held, expected)
    _weighted_loss(rh, plain(x_plain)).backward()
    _assert_grads_equal(rh, rev, plain, x_rev, x_plain)


def test_gradient_also_sent_to_another_stage_is_left_unchanged(rh):
    """``a + b``: autograd sends one gradient tensor to both stages; the
    one whose backward runs first must not write into it."""
    rev_a, plain_a = rh.make_pair(rh.conv_bn_list(3, seed=0), 0.9)
    rev_b, plain_b = rh.make_pair(rh.conv_bn_list(3, seed=1), 0.9)
    xs = [rh.data(seed=s) for s in (1, 2, 1, 2)]
    _weighted_loss(rh, rev_a(xs[0]) + rev_b(xs[1])).backward()
    _weighted_loss(rh, plain_a(xs[2]) + plain_b(xs[3])).backward()
    _assert_grads_equal(rh, rev_a, plain_a, xs[0], xs[2])
    _assert_grads_equal(rh, rev_b, plain_b, xs[1], xs[3])


def test_gradient_kept_by_a_hook_is_left_unchanged(rh):
    rev, _ = rh.make_pair(rh.conv_bn_list(4), 0.9)
    out = rev(rh.data())
    kept = []
    out.register_hook(kept.append)
    weight = rh.data(out.shape, seed=123, grad=False)
    loss = (out * weight).sum()
    del out
    loss.backward()
    assert torch.equal(kept[0], weight)


def test_retained_graph_leaves_the_output_and_gradients_correct(rh):
    rev, plain = rh.make_pair(rh.conv_bn_list(4), 0.9)
    x_rev, x_plain = rh.data(), rh.data()
    loss = _weighted_loss(rh, rev(x_rev))
    loss.backward(retain_graph=True)
    loss.backward()
    loss_plain = _weighted_loss(rh, plain(x_plain))
    loss_plain.backward(retain_graph=True)
    loss_plain.backward()
    _assert_grads_equal(rh, rev, plain, x_rev, x_plain)


@pytest.mark.parametrize('holder', ['output', 'gradient'])
def test_reuse_lowers_the_step_peak_by_a_stage_buffer(rh, holder):
    """Holding x_T or its gradient outside autograd costs one buffer of
    the stage's size at the peak (a few bytes of bookkeeping aside)."""
    from benchmarks.memory import step_peak_bytes

    rev, _ = rh.make_pair(rh.conv_bn_list(4, dtype=torch.float32), 0.9)
    x = rh.data((2, 4, 32, 32), dtype=torch.float32)
    weight = rh.data(x.shape, seed=123, dtype=torch.float32, grad=False)
    held = []

    def step(hold):
        out = rev(x)
        if hold and holder == 'output':
            held.append(out.detach())
        elif hold:
            out.register_hook(held.append)
        return (out * weight).sum()

    reused = step_peak_bytes(rev, lambda: step(False), exclude=[x])
    not_reused = step_peak_bytes(rev, lambda: step(True), exclude=[x])
    assert not_reused - reused >= 0.99 * x.nbytes


def test_gradient_the_caller_passes_is_left_unchanged(rh):
    """``out.backward(g)``: the caller still holds ``g``."""
    rev, _ = rh.make_pair(rh.conv_bn_list(4), 0.9)
    out = rev(rh.data())
    gradient = rh.data(out.shape, seed=123, grad=False)
    expected = gradient.clone()
    out.backward(gradient)
    assert torch.equal(gradient, expected)


def test_probe_is_measured_without_the_callers_hooks(rh, monkeypatch):
    """The first backward of the process measures what autograd alone
    holds. A saved-tensor hook active in it (here one that keeps a second
    alias of every saved tensor) must not raise that baseline, or a later
    output held by the caller would look free and be overwritten."""
    from mmrevnet.reversible import function

    monkeypatch.setattr(function._AutogradHolders, 'counts', None)
    rev, _ = rh.make_pair(rh.conv_bn_list(3), 0.9)
    aliases = []

    def pack(tensor):
        aliases.append(tensor.detach())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _weighted_loss(rh, rev(rh.data())).backward()
    aliases.clear()
    out = rev(rh.data())
    held = out.detach()
    expected = held.clone()
    loss = _weighted_loss(rh, out)
    del out
    loss.backward()
    assert torch.equal(held, expected)
